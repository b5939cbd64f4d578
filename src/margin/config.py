"""Typed configuration: declared once, validated at start-up, unknown keys rejected.

The file is YAML (`margin serve --config margin.yaml`); with no file, the embedded default
(`default_config.yaml` in this package) runs the local model. Every ledger row stores `config_hash()`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Iterable
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from margin.backend_config import BackendConfig
from margin.cache_config import CacheConfig
from margin.errors import ConfigError
from margin.price_config import PriceConfig, RevenueConfig
from margin.specs import (
    LEDGER_DIMENSIONS,
    MAX_PUE,
    MAX_USD_PER_KWH,
    AdmissionConfig,
    AuditConfig,
    BatchConfig,
    BudgetSpec,
    FlagSpec,
    GuardConfig,
    LimitSpec,
    PoliciesConfig,
    ResponsesConfig,
)
from margin.userfiles import load_yaml, read_text


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0, description="Requests with larger bodies get 413.")
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Requests whose head (URL and header lines), or chunked body's trailers, are larger get 431 "
        "and their connection is closed before the rest is read.",
    )
    head_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request's head (URL and headers) must be whole this long after its connection opened or its "
        "first byte came; else 408 (nothing sent: the connection is closed).",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="A request body may pause this long between two reads; then 408 and close."
    )
    max_connections: int = Field(
        4096,
        ge=1,
        description="Open connections per process; one more gets 503 and is closed. Kept under the open-files limit.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    key_cache_ttl_s: float = Field(
        5.0, ge=0, description="Revoked keys stop working within this time at worst (announced: at once)."
    )
    key_cache_entries: int = Field(
        10_000, ge=1, description="Keys found, and apart from them tokens not found, kept in memory (each bounded)."
    )
    session_secret_env: str | None = Field(
        None,
        description="Environment variable holding the secret that signs dashboard session cookies (the same on "
        "every replica). Unset: a random secret per process, so logins end when it restarts.",
    )
    secure_cookies: bool | None = Field(
        None,
        description="Mark the dashboard cookie Secure. Unset: only when the request came over https; set true "
        "when a proxy terminates TLS in front of margin.",
    )
    stream_write_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A stream whose client reads nothing for this long is ended as client_closed; any answer's "
        "connection is dropped 2 s later, with its unsent bytes.",
    )
    shutdown_grace_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="On SIGTERM/Ctrl-C, requests running (streams too) may finish for this long; a stream still "
        "running then ends with an error event (server_shutting_down), a request not yet answered with a 503.",
    )
    workers: int = Field(
        1,
        ge=1,
        le=512,
        description="Gateway processes on the one port. Above 1, budgets, rate limits and the exact cache are "
        "shared through storage.redis, or an embedded redis-server when none is configured.",
    )
    read_threads: int = Field(
        4,
        ge=1,
        le=64,
        description="Threads (per process) for the database work of the dashboard, the admin API and feedback. "
        "Their own: slow reads never hold the threads the request path uses.",
    )


class StorageConfig(Strict):
    ledger: str = Field("sqlite:///margin.db", description="SQLAlchemy URL (sqlite:///path or postgresql://…).")
    flush_interval_ms: int = Field(
        1000,
        gt=0,
        description="Rows wait in the outbox at most this long for the database; 2 MB of them (~2,000 rows) are "
        "moved at once (checked every 50 ms). A batch has a fixed cost: up to ~2,000 requests/s, one a second.",
    )
    ingest_batch_bytes: int = Field(
        16 * 1024 * 1024, ge=64 * 1024, description="Outbox bytes read into one database transaction (~1 KB a row)."
    )
    max_pending_rows: int = Field(
        100_000, gt=0, description="Rows in the outbox, not yet in the database; beyond this, new requests get 503."
    )
    outbox_dir: str | None = Field(
        None,
        description="Directory of the ledger outbox (append-only files; one per process). Unset: `<file>.outbox` "
        "next to a SQLite ledger, else `$XDG_STATE_HOME/margin/outbox-<hash of the ledger URL>`.",
    )
    outbox_fsync: Literal["never", "interval", "always"] = Field(
        "never",
        description="never: rows survive a killed process (the page cache keeps them), not a power cut; "
        "interval: fdatasync every outbox_fsync_interval_ms (bounds loss on power cut); always: every row "
        "(a disk flush on the request path).",
    )
    outbox_fsync_interval_ms: int = Field(1000, gt=0)
    ingest_in: Literal["process", "thread"] = Field(
        "process",
        description="Where the ledger's SQL runs: a child process of each gateway process (its Python never "
        "holds the gateway's GIL: 3 ms off p99 at 500 RPS), or a thread of the gateway (one process less).",
    )
    ingest_stage_ahead: bool = Field(
        True,
        description="SQLite file ledgers: stage the next batch on a second thread while one is appended (a "
        "backlog moves ~40 % faster on two cores; ~+115 MB while one lasts). false: one thread, one core.",
    )
    outbox_segment_bytes: int = Field(
        64 * 1024 * 1024, ge=4096, description="An outbox file is closed and a new one started past this size."
    )
    outbox_max_bytes: int = Field(
        1024 * 1024 * 1024,
        gt=0,
        description="Outbox bytes not yet in the database, per process; beyond this, new requests get 503.",
    )
    redis: str | None = Field(
        None, description="redis://host:port/db: budgets and rate limits shared by several gateway replicas."
    )


class RegionConfig(Strict):
    """Where a backend runs: decides carbon intensity, PUE, energy price and jurisdiction."""

    jurisdiction: str | None = Field(None, description="e.g. EU, US: used for data residency.")
    grid_zone: str | None = Field(
        None, description="Key in the bundled grid table: ISO 3166 alpha-3 country (FRA) or gcp:<region>."
    )
    grid_g_per_kwh: float | None = Field(None, ge=0, description="Overrides the bundled grid intensity.")
    pue: float = Field(1.0, ge=1.0, le=MAX_PUE, description="Facility energy / IT energy.")
    usd_per_kwh: Decimal = Field(Decimal("0"), ge=0, le=MAX_USD_PER_KWH, description="Price of facility energy.")
    curve: str | None = Field(
        None,
        description="Zone of the hourly curves (`grid.curves`, e.g. DE-LU): the meter, the batch scheduler and "
        "carbon-aware routes use that zone's intensity for the hour instead of the static value.",
    )
    price_curve: bool = Field(
        False, description="With `curve`: also take $/kWh from the curve's hourly (wholesale) price, not usd_per_kwh."
    )


DEFAULT_REGION = RegionConfig()  # frozen: a backend with no region set


class ModelConfig(Strict):
    backend: str
    kind: Literal["chat", "embedding"] = "chat"
    upstream_model: str | None = Field(None, description="Name at the backend; defaults to the public id.")
    aliases: list[str] = Field(default_factory=list)
    price: PriceConfig | None = Field(None, description="List price override (API backends).")
    price_ref: str | None = Field(None, description="Model name to look up in genai-prices.")
    context_length: int | None = Field(None, ge=1)
    owned_by: str = "margin"
    fallbacks: list[str] = Field(
        default_factory=list, description="Models tried in order when this one's backend fails or is down."
    )


PREFERENCE_POLICIES = ("lowest-carbon", "lowest-cost")


class RouteConfig(Strict):
    """A routed model name. `cheapest-adequate` sends each prompt to the cheap model when the learned router
    predicts it will answer adequately, else to the strong one (set exactly one target). `lowest-carbon` and
    `lowest-cost` list equivalent deployments of one model (several backends or regions) and send each request
    to the one with the lowest gCO2e per token, or $ per token, at that hour; the first is the default, what
    the ledger's counterfactual compares with."""

    policy: Literal["cheapest-adequate", "lowest-carbon", "lowest-cost"] = "cheapest-adequate"
    ladder: list[str] = Field(
        min_length=2,
        description="cheapest-adequate: [cheap model, strong model]; lowest-carbon/lowest-cost: the equivalent "
        "models, the default first.",
    )
    strong_share: float | None = Field(None, ge=0, le=1, description="Target share of calls to the strong model.")
    quality_floor: float | None = Field(None, ge=0, le=1, description="Target PGR (share of the quality gap kept).")
    threshold: float | None = Field(None, ge=0, le=1, description="Explicit cut on P(cheap model is adequate).")
    router: str = Field("builtin", description="Router artifact: builtin or a path.")

    @model_validator(mode="after")
    def _one_target(self) -> RouteConfig:
        targets = sum(v is not None for v in (self.strong_share, self.quality_floor, self.threshold))
        if self.policy in PREFERENCE_POLICIES:
            if targets:
                raise ValueError(f"{self.policy} takes no strong_share, quality_floor or threshold")
            if len(set(self.ladder)) != len(self.ladder):
                raise ValueError("a model is listed twice in the ladder")
            return self
        if len(self.ladder) != 2:
            raise ValueError("cheapest-adequate takes exactly two models: [cheap, strong]")
        if targets != 1:
            raise ValueError("set exactly one of strong_share, quality_floor or threshold")
        return self

    @property
    def preference(self) -> Literal["carbon", "cost"] | None:
        """What a preference route minimises (None for cheapest-adequate)."""
        if self.policy == "lowest-carbon":
            return "carbon"
        return "cost" if self.policy == "lowest-cost" else None


class TagsConfig(Strict):
    header_keys: list[str] = Field(
        default_factory=lambda: ["feature", "customer", "task_id", "cohort", "env"],
        description="Tag keys a caller may set with the x-margin-tags header.",
    )
    rollup_keys: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]] = Field(
        default_factory=lambda: ["feature", "customer"],
        description="Tag keys kept in the daily rollups (reports and dashboard group by them without reading "
        "rows). Each adds about days × teams × values rows; a change applies after `margin db rebuild-rollups`. "
        "Not a name the ledger groups its own columns by (model, status, key, …: specs.LEDGER_DIMENSIONS).",
    )
    indexed_keys: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]] = Field(
        default_factory=lambda: ["customer"],
        description="Tag keys the ledger indexes by value: a per-value budget on one (`customer=*`) rebuilds a "
        "counter from that value's rows, not from every row of its window. Each costs the ingest one index entry "
        "per row that carries the tag; a change applies after `margin db index-tags`.",
    )

    @model_validator(mode="after")
    def _rollup_keys_are_not_dimensions(self) -> TagsConfig:
        taken = sorted(set(self.rollup_keys) & LEDGER_DIMENSIONS)
        if taken:
            raise ValueError(
                f"rollup_keys: {', '.join(taken)} is a dimension the ledger groups its own columns by; a tag of that "
                "name rolled up would add its values to that dimension's rows (and reads group by the column)"
            )
        return self


class TelemetryConfig(Strict):
    """Lossy observability, apart from the ledger: Prometheus metrics at `GET /metrics` and, when an endpoint
    is set, OpenTelemetry traces (GenAI semantic conventions) over OTLP/HTTP. Needs the `otel` extra."""

    metrics: bool = Field(True, description="Serve `GET /metrics` (admin key when keys exist).")
    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces. Unset: no traces."
    )
    otlp_headers_env: str | None = Field(
        None, description="Environment variable with headers for the collector (`key=value,key2=value2`)."
    )
    service_name: str = Field("margin", description="`service.name` of the spans.")
    trace_queue: int = Field(
        4096, ge=1, description="Finished requests waiting to become spans; beyond it they are dropped (counted)."
    )


class GridConfig(Strict):
    """Hourly grid curves (gCO2e/kWh and $/kWh per zone): a typical day per zone and month. Regions opt in with
    `curve: ZONE`."""

    curves: str = Field(
        "builtin",
        description="builtin (bundled, dated: economics/data/grid_curves.csv), a CSV file of the same columns, "
        "or an http(s) URL serving one (fetched at start and every refresh_s).",
    )
    refresh_s: float | None = Field(None, gt=0, description="Re-read a file or URL source this often.")
    fetch_timeout_s: float = Field(10.0, gt=0)
    max_bytes: int = Field(16 * 1024 * 1024, gt=0, description="A curve source larger than this is refused.")


class Settings(Strict):
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    regions: dict[str, RegionConfig] = Field(default_factory=dict)
    backends: dict[str, BackendConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    tags: TagsConfig = TagsConfig()
    policies: PoliciesConfig = PoliciesConfig()
    budgets: list[BudgetSpec] = Field(default_factory=list)
    limits: list[LimitSpec] = Field(default_factory=list)
    flags: list[FlagSpec] = Field(default_factory=list)
    admission: AdmissionConfig = AdmissionConfig()
    guard: GuardConfig = GuardConfig()
    cache: CacheConfig = CacheConfig()
    routes: dict[str, RouteConfig] = Field(default_factory=dict, description="Routed model names.")
    revenue: RevenueConfig = RevenueConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    grid: GridConfig = GridConfig()
    batches: BatchConfig = BatchConfig()
    audit: AuditConfig = AuditConfig()
    responses: ResponsesConfig = ResponsesConfig()

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        seen: dict[str, str] = {}
        for name, model in self.models.items():
            if model.backend not in self.backends:
                raise ValueError(f"model {name!r} names unknown backend {model.backend!r}")
            for public in (name, *model.aliases):
                if public in seen:
                    raise ValueError(f"model name {public!r} is used by both {seen[public]!r} and {name!r}")
                seen[public] = name
        for name, model in self.models.items():
            unknown = [f for f in model.fallbacks if f not in seen]
            if unknown:
                raise ValueError(f"model {name!r} falls back to unknown models {unknown}")
        for name, route in self.routes.items():
            if name in seen:
                raise ValueError(f"route {name!r} has the name of a model")
            unknown = [m for m in route.ladder if m not in seen]
            if unknown:
                raise ValueError(f"route {name!r} names unknown models {unknown}")
            kinds = {self.models[seen[m]].kind for m in route.ladder}
            if route.preference is not None and len(kinds) > 1:
                raise ValueError(f"route {name!r} mixes chat and embedding models")
        for name, backend in self.backends.items():
            if backend.region != "default" and backend.region not in self.regions:
                raise ValueError(f"backend {name!r} names region {backend.region!r} not in `regions`")
        self._check_policy_models()
        self._check_flag_models()
        return self

    def _check_flag_models(self) -> None:
        """A `force_model` flag naming no model would answer every request it covers with a 404: refused at start."""
        for flag in self.flags:
            unserved = flag.action == "force_model" and flag.model and self.unserved_model_message(flag.model)
            if unserved:
                raise ValueError(f"flag {flag.name!r}: {unserved}")

    def _check_policy_models(self) -> None:
        """A typo in a policy's `models` would allow nothing (or, dropped, everything): refused at start."""
        config = self.policies
        levels = {"default": config.default}
        for kind, policies in (("orgs", config.orgs), ("teams", config.teams), ("tags", config.tags)):
            levels |= {f"{kind}.{name}": policy for name, policy in policies.items()}
        for where, policy in levels.items():
            unknown = self.unknown_models(policy.models or ())
            if unknown:
                raise ValueError(f"policies.{where}.models: {unknown_models_message(unknown, self)}")

    def unknown_models(self, names: Iterable[str]) -> list[str]:
        """The names that are neither a model's public name (`models:`) nor a routed name (`routes:`)."""
        return [name for name in names if name not in self.models and name not in self.routes]

    def unserved_model_message(self, name: str) -> str | None:
        """Why a `force_model` flag cannot send requests to `name` (None: it can): the model it names answers only
        as a model's public name or alias (`models:`), not a routed name, or every request it covers is a 404."""
        if any(name == public or name in model.aliases for public, model in self.models.items()):
            return None
        routed = " (a routed name: name one of its models)" if name in self.routes else ""
        return f"force_model's model `{name}`{routed} is not a model (`models:`) or alias of this gateway"

    def region(self, name: str) -> RegionConfig:
        return self.regions.get(name, DEFAULT_REGION)


def unknown_models_message(unknown: list[str], settings: Settings) -> str:
    aliases = {alias: name for name, model in settings.models.items() for alias in model.aliases}
    named = [f"`{name}`" + (f" (an alias: name `{aliases[name]}`)" if name in aliases else "") for name in unknown]
    return f"{', '.join(named)} not a model (`models:`) or routed name (`routes:`) of this gateway"


def default_config_text() -> str:
    return resources.files("margin").joinpath("default_config.yaml").read_text(encoding="utf-8")


def parse_settings(data: Any, source: str = "<config>") -> Settings:
    try:
        return Settings.model_validate(data if data is not None else {})
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"invalid configuration in {source}:\n" + "\n".join(lines)) from exc


def load_settings(path: str | Path | None = None) -> Settings:
    """Load a YAML file, or the embedded default when `path` is None. `${VAR}` expands from the env."""
    if path is None:
        text, source = default_config_text(), "default_config.yaml"
    else:
        text, source = read_text(Path(path), "config"), str(path)
    return parse_settings(load_yaml(os.path.expandvars(text), source), source)


RELOADABLE = ("budgets", "limits", "flags", "policies")  # what a reload (SIGHUP, POST /admin/reload) changes


def with_reloaded(settings: Settings, fresh: Settings) -> Settings:
    """`settings` with the reloadable sections of `fresh` (a config file read again); the rest needs a restart."""
    return settings.model_copy(update={name: getattr(fresh, name) for name in RELOADABLE})


def config_hash(settings: Settings) -> str:
    """A short, stable hash of the effective settings (stored on every ledger, bench and eval row)."""
    canonical = orjson.dumps(settings.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
