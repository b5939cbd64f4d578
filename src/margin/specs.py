"""Typed definitions of budgets, rate limits, flags and policies: used by the config file, the admin API
and the CLI alike (unknown keys rejected everywhere)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationInfo,
    model_validator,
)

MAX_USD = Decimal("9e9")  # the most USD any amount may be: integer nano-USD in a signed 64-bit column (~$9.2e9)
# the most a config's (and `margin cost`'s) price and power inputs may be: what no real deployment reaches, and
# within which a request's cost stays inside MAX_USD (before, `input: 1e16` $/M made every request's settlement
# raise on the ledger's range: a 500 and no row). $1 a token: input and output of 2^30 tokens each cost < $2.2e9.
MAX_USD_PER_MTOK = Decimal(1_000_000)
MAX_USD_PER_HOUR = Decimal(1_000_000)
MAX_USD_PER_KWH = Decimal(1_000)
MAX_OVERHEAD = Decimal(10)  # an overhead share past 1,000 % of the hardware's price is a typo
MAX_WATTS = 10_000_000.0
MAX_PUE = 10.0
MAX_TOKEN_CAP = 2**53  # the largest token budget: exact in JSON numbers (doubles) and in 64-bit counters
# what a report groups by from the ledger's own columns (and its error, hour and day): a tag key of one of these
# names is read as the column, and rolled up (`tags.rollup_keys`) its values were added to that dimension's daily
# rows (`--by status` listed a `vip` status of twice the requests tagged `status=vip`). = measures.COLUMNS + 3
LEDGER_DIMENSIONS = frozenset({
    "key", "team", "org", "model", "backend", "region", "endpoint", "status", "user", "kind", "service_tier",
    "error", "hour", "day",
})  # fmt: skip


def _held_at(cap: int) -> AfterValidator:
    """An integer above `cap` is held at it, as a `usd` cap is at MAX_USD: a larger one ("unlimited") stored by an
    older version still loads, and nothing past what JSON numbers and 64-bit counters hold is written back
    (before, 10**26 was stored, then crashed the JSON that prints or serves it)."""
    return AfterValidator(lambda value: min(value, cap))


Count = Annotated[int, _held_at(MAX_TOKEN_CAP)]  # tokens or requests a budget or limit counts
MaxTokens = Annotated[int, _held_at(2**31 - 1)]  # what every engine's max_tokens holds

ScopeKind = Literal["global", "org", "team", "key", "tag", "model", "backend", "user"]
Level = Literal["off", "log", "redact", "block"]
LEVELS: tuple[Level, ...] = ("off", "log", "redact", "block")


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ORG_QUALIFIED: tuple[ScopeKind, ...] = ("team", "tag", "user")  # names that two orgs may both use
EACH = "*"  # a scope value (`user=*`) or tag value (`tag=customer=*`) meaning "each value, separately"
MAX_USER = 256  # the OpenAI `user` field's bound (margin.protocol.UserId)
CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # what no key's name, team, org or tag may hold (margin.keys.Label)
LEASE_RENEWALS = 3  # a batch lease lasts at least this many of its worker's passes (BatchConfig)
DEFAULT_LEASE_S = 30.0


class Scope(Spec):
    """What a budget, limit or flag applies to. `tag` values look like `customer=acme`; `user` values are the
    OpenAI `user` field a request sends.

    Team, tag and user names are only unique within an org: `org` restricts such a scope to one org; without
    it, the rule applies in every org, and each org keeps its own budget counter and rate-limit bucket (two
    orgs' teams named `support` never share spend).

    `user=*` and `tag=customer=*` (budgets and rate limits only) apply to each end user, or each value of the
    tag, separately: one counter and bucket per value (and per org, as above); a request without a `user` (or
    without the tag) is not covered."""

    kind: ScopeKind
    value: str | None = Field(None, max_length=256)  # a team, key, model, backend name or `key=value` tag
    org: str | None = Field(None, min_length=1, max_length=128, description="Only this org's team or tag.")

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Scope:
        if (self.kind == "global") != (self.value is None):
            raise ValueError("scope `global` takes no value; every other scope needs one")
        if self.kind == "tag" and (not self.value or "=" not in self.value):
            raise ValueError("a tag scope looks like key=value, e.g. customer=acme")
        if self.kind == "user" and not 1 <= len(self.value or "") <= MAX_USER:
            raise ValueError(f"a user scope is user=* (each end user) or one `user` value (1-{MAX_USER} characters)")
        if info.context and info.context.get("stored"):  # one stored before the checks below still loads
            return self
        if any(text is not None and (not text or CONTROL.search(text)) for text in (self.value, self.org)):
            # no key, team, org, tag, model or `user` holds one: a rule on it would apply to nothing, silently
            raise ValueError("a scope's value and org are not empty and hold no control characters")
        if self.kind == "tag" and (self.value or "").partition("=")[0] in ("", EACH):
            raise ValueError("a tag scope names its tag: key=value or key=* (e.g. customer=*)")
        if self.value is not None and EACH in self.value and not self.per_value:
            raise ValueError("`*` (each value) is only for user=* and tag=<key>=*")
        if self.org is not None and self.kind not in ORG_QUALIFIED:
            raise ValueError("only team and tag scopes take an `org`")
        return self

    def label(self) -> str:
        if self.kind == "global":
            return "global"
        return f"{self.kind}={self.value}" + (f",org={self.org}" if self.org is not None else "")

    @property
    def per_org(self) -> bool:
        """Counted separately for each org (a team or tag scope that names no org)."""
        return self.kind in ORG_QUALIFIED and self.org is None

    @property
    def unlisted(self) -> bool:
        """Its counters are keyed by a value `/admin/budgets` and `/metrics` cannot name (each user or tag value;
        a user's pseudonym): listed with their limit, no spend."""
        return self.kind == "user" or self.per_value

    @property
    def per_value(self) -> bool:
        """Counted separately for each end user (`user=*`) or each value of a tag (`tag=customer=*`)."""
        value = self.value
        return value is not None and (
            (self.kind == "user" and value == EACH) or (self.kind == "tag" and value.endswith("=" + EACH))
        )


MIN_USD = Decimal("0.000000001")
DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _exact_usd(value: object) -> object:
    """An amount of USD as a JSON number (an integer, or a `Decimal` where the admin API read the body's numbers
    exactly: `margin.jsonload.exact`) or a decimal string (`"0.25"`, `"1e3"`), never through a binary float. A
    boolean, or a string that is not a plain decimal number (`"1_000"`, `" 5"`, `"0x10"`), is refused."""
    if isinstance(value, bool):
        raise ValueError('give a number or a decimal string such as "0.25", not true or false')
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        if DECIMAL_TEXT.fullmatch(value) is None:
            raise ValueError(f'give a number or a decimal string such as "0.25", not {value[:40]!r}')
        return Decimal(value)
    return value  # a Decimal; a float (a config file's YAML) where validation is lax, refused where it is strict


Usd = Annotated[Decimal, BeforeValidator(_exact_usd)]


class BudgetSpec(Spec):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[\w.:@/+=-]+$")
    scope: Scope
    usd: Usd | None = Field(None, gt=0, description="Spend cap in USD (above MAX_USD: no cap beyond it).")
    tokens: Count | None = Field(None, gt=0, description="Cap on input + output tokens (above 2**53: counts as it).")
    period: Literal["hour", "day", "month", "lifetime"] = "month"
    mode: Literal["hard", "soft"] = "hard"
    alert_pct: int = Field(80, ge=1, le=100, description="Soft budgets warn from this share on.")

    @model_validator(mode="after")
    def _one_metric(self, info: ValidationInfo) -> BudgetSpec:
        if self.scope.kind == "backend":
            raise ValueError("budgets apply to global, org, team, key, tag, user or model scopes")
        if (self.usd is None) == (self.tokens is None):
            raise ValueError("a budget caps exactly one of `usd` or `tokens`")
        # less than the ledger's 1 nano-USD is a cap of 0 (every request refused): refused when a budget is set
        # or configured; one stored before this check still loads (a bad row must not stop every rule loading)
        stored = bool(info.context and info.context.get("stored"))
        if self.usd is not None and self.usd < MIN_USD and not stored:
            raise ValueError(f"usd must be at least {MIN_USD} (the ledger counts whole nano-USD)")
        return self


class LimitSpec(Spec):
    scope: Scope
    rpm: Count | None = Field(None, gt=0, description="Requests per minute (above 2**53: counts as it).")
    tpm: Count | None = Field(None, gt=0, description="Tokens (input + output) per minute (above 2**53: counts as it).")

    @model_validator(mode="after")
    def _some_limit(self) -> LimitSpec:
        if self.scope.kind not in ("key", "team", "org", "global", "user") and not self.scope.per_value:
            raise ValueError(
                "rate limits apply to a key, team, org, user, each user (user=*), each value of a "
                "tag (tag=customer=*) or globally"
            )
        if self.rpm is None and self.tpm is None:
            raise ValueError("set rpm, tpm or both")
        return self


FLAG_ARGUMENTS = (("model", "force_model"), ("max_tokens", "cap_max_tokens"))  # (argument, the action using it)


class FlagSpec(Spec):
    """A kill switch or override, effective without restart."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[\w.:@/+=-]+$")
    target: Scope = Field(description="What the flag applies to: global, model, backend, tag, team, org or key.")
    action: Literal["disable", "force_model", "cap_max_tokens", "require_cache"]
    model: str | None = Field(
        None, max_length=128, description="force_model only (another action refuses it): the model to use instead."
    )
    max_tokens: MaxTokens | None = Field(
        None, gt=0, description="cap_max_tokens only (another action refuses it); above 2**31 - 1 counts as it."
    )
    reason: str = Field("", max_length=500)
    enabled: bool = True

    @model_validator(mode="after")
    def _arguments(self, info: ValidationInfo) -> FlagSpec:
        if (self.target.kind == "user" or self.target.per_value) and not (info.context and info.context.get("stored")):
            raise ValueError("flags apply to global, model, backend, tag, team, org or key (not users or `*`)")
        if self.action == "force_model" and not self.model:
            raise ValueError("force_model needs `model`")
        if self.action == "cap_max_tokens" and not self.max_tokens:
            raise ValueError("cap_max_tokens needs `max_tokens`")
        unused = self.unused_arguments()
        if unused and info.context and info.context.get("new"):  # a stored or configured one loads as it was
            used = " and ".join(f"`{name}` is for {action}" for name, action in FLAG_ARGUMENTS)
            raise ValueError(f"{self.action} does not use {' or '.join(unused)} ({used})")
        return self

    def unused_arguments(self) -> list[str]:
        """The arguments set that the action ignores (`model` on a disable flag): refused when a flag is created
        or replaced (CLI, admin API); a flag stored or configured with one before still loads, and ignores it."""
        return [
            f"`{name}`" for name, action in FLAG_ARGUMENTS if getattr(self, name) is not None and self.action != action
        ]


ModelName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\s\x00-\x1f\x7f]+$")]
MAX_POLICY_MODELS = 256


class Policy(Spec):
    """Per key/team/tag rules. Unset fields inherit; levels, jurisdictions and models combine strictly."""

    jurisdictions: list[str] | None = Field(  # bounded: a key's policy arrives over the admin API too
        None, max_length=64, fail_fast=True, description="Allowed backend jurisdictions (e.g. [EU]), at most 64."
    )
    pii: Level | None = Field(None, description="PII in input messages: off | log | redact | block.")
    pii_output: Literal["off", "log", "redact"] | None = Field(None, description="PII in answers.")
    restore_pii: bool | None = Field(None, description="Put redacted originals back in the answer.")
    injection: Literal["off", "log", "block"] | None = None
    log_prompts: bool | None = Field(None, description="Store the (redacted) prompt in the ledger.")
    models: list[ModelName] | None = Field(
        None,
        max_length=MAX_POLICY_MODELS,
        fail_fast=True,
        description="The only models (public names from `models:`, routed names from `routes:`) the caller may "
        "use, at most 256; where several levels list some, only those in all.",
    )
    _allowed: frozenset[str] | None = PrivateAttr(None)

    def model_post_init(self, context: object, /) -> None:
        self._allowed = frozenset(self.models) if self.models is not None else None

    @property
    def allowed_models(self) -> frozenset[str] | None:
        """`models` as a set, built once per policy (a merged policy is memoized per caller): None, any model.
        Read through pydantic's `__getattr__` (~4 us): the request path tests `models is not None` first."""
        return self._allowed


class PoliciesConfig(Spec):
    default: Policy = Policy()
    teams: dict[str, Policy] = Field(default_factory=dict)
    tags: dict[str, Policy] = Field(default_factory=dict, description="Keyed by `key=value`.")
    orgs: dict[str, Policy] = Field(default_factory=dict)


class GuardConfig(Spec):
    ner: bool = Field(
        False,
        description="Also find PERSON/LOCATION with spaCy when a model is installed (~8 ms a message on CPU).",
    )
    max_scan_chars: int = Field(
        1_048_576,
        gt=0,
        description="Characters of text one request (and, apart, its answer) may give the guard to read; a "
        "policy that redacts or blocks refuses larger requests with 413 guard_scan_limit.",
    )
    max_spans: int = Field(10_000, gt=0, description="Sensitive values one request may hold (same refusal).")
    max_phone_checks: int = Field(
        2_000, gt=0, description="Phone candidates validated per request (~0.1-0.5 ms each; same refusal)."
    )
    inline_scan_chars: int = Field(
        2_048,
        ge=0,
        description="Scans costing more than this many characters (each run of digits counts 1,000: it may need "
        "a phone-number validation) run on the guard's worker thread, off the event loop.",
    )
    max_queued_scans: int = Field(
        16,
        gt=0,
        description="Requests whose scans may wait for the worker thread at once; more are refused with 503 "
        "guard_busy (Retry-After: 1) before their backend call, so large prompts cannot delay every caller's.",
    )
    user_hash_key_env: str | None = Field(
        None,
        description="Environment variable holding a secret: the ledger then stores HMAC-SHA256(secret, user) "
        "instead of a plain SHA-256 of the OpenAI `user` field (which a dictionary of e-mails can reverse).",
    )


class AdmissionConfig(Spec):
    reservation_ttl_s: float = Field(
        900, gt=0, description="A reservation not settled by then is charged at its reserved amount."
    )
    default_max_output_tokens: int = Field(
        4096, gt=0, description="Worst case when neither max_tokens nor the model's context length is known."
    )
    reserve_tokens_per_s: float = Field(
        10.0,
        gt=0,
        description="Throughput assumed to price reservations on self-hosted backends without hardware.tokens_per_s.",
    )
    hard_busy_reserve_s: float = Field(
        30.0,
        gt=0,
        description="Under a hard USD budget, a backend priced by busy time (one with `hardware`) is reserved at "
        "least this many busy seconds (more when the tokens at its throughput take longer; at most the backend's "
        "`timeout_s`), and the call is cut when it has run that long (504 / error event `budget_time_allowance`): "
        "its charge never passes what was reserved. Headroom for queueing and a slow first token.",
    )
    refresh_s: float = Field(2.0, gt=0, description="How often budgets, limits and flags are re-read.")
    unknown_price: Literal["allow", "reject"] = Field(
        "reject", description="What a hard USD budget does with a model whose price is unknown."
    )
    breaker_failures: int = Field(
        5, ge=1, description="Consecutive backend faults (5xx, timeouts, unreachable) that open a backend's circuit."
    )
    breaker_cooldown_s: float = Field(30.0, gt=0)
    max_budget_counters: int = Field(
        100_000,
        ge=1,
        description="Budget counters of the current windows one process may hold (a per-user or per-tag-value "
        "budget keeps one per value): past it, a request needing a new counter is refused with 503 "
        "budget_counters_full (fail closed: a hard budget is never under-counted by evicting one).",
    )
    max_streams_per_key: int | None = Field(
        64,
        ge=1,
        description="Streams one API key may hold open at once calling upstream (across the processes sharing a "
        "Redis, else per gateway process); more get 429. As many more may wait for an identical request's answer "
        "(a coalesced cache miss): past those, 429 too.",
    )


class ResponsesConfig(Spec):
    """OpenAI's Responses API (`POST /v1/responses`): whether responses are stored (in the ledger database), so
    that `previous_response_id` continues one and `GET /v1/responses/{id}` reads it back."""

    store: bool = Field(
        False,
        description="Store responses (a request's `store` defaults to true, as OpenAI's does). Off: `store: true` and "
        "`previous_response_id` are refused (400).",
    )
    retention_days: int = Field(
        30, ge=1, le=3650, description="A stored response is gone (404, then pruned) after this."
    )
    max_stored_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="A response whose input and output items take more (as JSON) is not stored (its answer says "
        "`store: false`).",
    )
    max_chain_turns: int = Field(
        100, ge=1, le=10_000, description="The most stored responses one `previous_response_id` chain may walk."
    )
    max_chain_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="The most bytes of stored items one `previous_response_id` chain may prepend to a request.",
    )


class AuditConfig(Spec):
    """The audit log of administrative changes (`GET /admin/audit`, `margin audit`)."""

    retention_days: int | None = Field(
        None, ge=1, le=36_500, description="Delete rows older than this (the chain stays verifiable). Unset: keep all."
    )
    denied_per_minute: int = Field(
        10, ge=0, le=10_000, description="Denied attempts recorded per client address and minute, per process."
    )
    denied_total_per_minute: int = Field(
        120, ge=0, le=100_000, description="Denied attempts recorded per minute over all addresses, per process."
    )


class BatchConfig(Spec):
    """The OpenAI Batch API (`/v1/files`, `/v1/batches`): limits, pricing and scheduling."""

    enabled: bool = True
    discount: Decimal = Field(
        Decimal("0.5"), ge=0, le=1, description="Share taken off the metered cost of every batch line (0.5 = 50 %)."
    )
    objective: Literal["asap", "carbon", "cost"] = Field(
        "carbon",
        description="What a job's schedule minimises before its deadline: gCO2e, $, or nothing (run at once).",
    )
    max_file_bytes: int = Field(50 * 1024 * 1024, gt=0, description="Largest upload (413 beyond).")
    upload_expires_after_s: int | None = Field(
        2_592_000,
        ge=0,
        description="When an upload sent without `expires_after` expires: this many seconds after it was created "
        "(2592000, 30 days: OpenAI's default for purpose=batch). null or 0: kept until deleted. An upload's own "
        "`expires_after` wins; a job's output and error files follow its `output_expires_after` (else kept).",
    )
    max_lines: int = Field(50_000, gt=0, description="Most lines in one file.")
    max_line_bytes: int = Field(1024 * 1024, gt=0, description="Longest line of a file.")
    max_stored_bytes_per_key: int = Field(
        1024 * 1024 * 1024,
        gt=0,
        description="What one key may make the gateway store: its files (uploads, output and error files), its jobs' "
        "rows, and its unfinished jobs' lines, answers so far and refused lines. An upload or a new job (its row and "
        "a copy of its input) beyond is refused (413 storage_quota_exceeded); a job whose lines and refused lines "
        "would go beyond fails at validation with that code, storing none of them. A running job's answers are "
        "always kept and counted: the key may go over by them, and its next upload or job is refused.",
    )
    max_active_jobs_per_key: int = Field(
        32,
        ge=1,
        description="Jobs one key may have not yet finished (validating, in_progress, finalizing, cancelling); a new "
        "one beyond is refused (429 too_many_active_batches).",
    )
    max_window_h: int = Field(168, ge=1, description="Longest completion_window accepted (`24h` is OpenAI's).")
    concurrency: int = Field(4, ge=1, description="Lines of one job in flight at once.")
    max_attempts: int = Field(
        3,
        ge=1,
        le=1000,
        description="Tries of a line that failed with 429/5xx before it fails (margin's own rate limit "
        "refusals are waited out, not tries).",
    )
    poll_s: float = Field(1.0, gt=0, description="How often the worker looks for work and cancellations.")
    lease_s: float | None = Field(
        None,
        gt=0,
        description="A worker holds a job this long between renewals; a dead worker's job resumes after. Unset: "
        "30 s, or 3 × poll_s when that is longer. Set: at least 3 × poll_s (it renews every poll_s).",
    )
    assumed_output_tokens: int = Field(
        256, ge=1, description="Output tokens assumed for a line without max_tokens when sizing the schedule."
    )
    capacity_share: float = Field(
        1.0, gt=0, le=1, description="Share of a backend's hardware.tokens_per_s that batch schedules may plan."
    )

    @model_validator(mode="after")
    def _lease_outlasts_renewals(self) -> BatchConfig:
        # a worker renews its leases once a pass (every poll_s and the pass's own time): a lease that ran out
        # between two let another worker take a job still running, and run its lines in flight a second time
        if self.lease_s is not None and self.lease_s < LEASE_RENEWALS * self.poll_s:
            raise ValueError(f"batches.lease_s must be at least {LEASE_RENEWALS} × batches.poll_s")
        return self

    @property
    def lease(self) -> float:
        """The lease a worker holds a job for: `lease_s`, or unset, 30 s or 3 passes when longer (a config with a
        long `poll_s` and no `lease_s` starts, as it did before the bound)."""
        return self.lease_s if self.lease_s is not None else max(DEFAULT_LEASE_S, LEASE_RENEWALS * self.poll_s)
