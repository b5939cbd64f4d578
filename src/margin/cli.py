"""The `margin` command. Heavy imports stay inside the commands so `margin --help` is instant."""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from margin.batches import cli as batches_cli
from margin.bench import cli as bench_cli
from margin.config import Settings, load_settings
from margin.errors import MarginError
from margin.evals import cli as evals_cli
from margin.governance import cli as gov_cli
from margin.kv import cli as kv_cli
from margin.models import cli as models_cli
from margin.plan import cli as plan_cli

app = typer.Typer(no_args_is_help=True, add_completion=False, help="margin: inference gateway + unit economics")
keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")
db_app = typer.Typer(no_args_is_help=True, help="Ledger database migrations.")
config_app = typer.Typer(no_args_is_help=True, help="Show or check configuration.")
export_app = typer.Typer(no_args_is_help=True, help="Export the ledger (FOCUS 1.2).")
feedback_app = typer.Typer(no_args_is_help=True, help="Request outcomes (success, score, value).")
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(export_app, name="export")
app.add_typer(feedback_app, name="feedback")
app.add_typer(evals_cli.app, name="eval")
app.add_typer(kv_cli.app, name="kv")
app.add_typer(models_cli.app, name="models")
app.add_typer(plan_cli.app, name="plan")
app.add_typer(gov_cli.budgets_app, name="budgets")
app.add_typer(gov_cli.limits_app, name="limits")
app.add_typer(gov_cli.flags_app, name="flags")
app.add_typer(batches_cli.app, name="batches")
app.command("bench")(bench_cli.bench)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (default: embedded).")]
DbOpt = Annotated[Path | None, typer.Option("--db", help="SQLite ledger file (overrides storage.ledger).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _console() -> Console:
    return Console(stderr=False, highlight=False)


def _fail(error: MarginError | str, code: int = 2) -> typer.Exit:
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {getattr(error, 'message', error)}")
    return typer.Exit(code)


def settings_from(config: Path | None, db: Path | None = None, **server: Any) -> Settings:
    try:
        settings = load_settings(config)
    except MarginError as exc:
        raise _fail(exc) from exc
    if db is not None:
        storage = settings.storage.model_copy(update={"ledger": f"sqlite:///{db}"})
        settings = settings.model_copy(update={"storage": storage})
    overrides = {k: v for k, v in server.items() if v is not None}
    if overrides:
        settings = settings.model_copy(update={"server": settings.server.model_copy(update=overrides)})
    return settings


def _sync_engine(settings: Settings) -> Any:
    from margin.ledger import db

    db.upgrade(settings.storage.ledger)
    return db.make_sync_engine(settings.storage.ledger)


@app.command()
def serve(
    config: ConfigOpt = None,
    db: DbOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
) -> None:
    """Start the gateway (OpenAI-compatible API on http://HOST:PORT/v1)."""
    from margin.serve import run

    settings = settings_from(config, db, host=host, port=port)
    try:
        run(settings, _console(), config)
    except MarginError as exc:
        raise _fail(exc) from exc


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="A name for the key's owner or use.")],
    team: Annotated[str | None, typer.Option("--team", help="Team the key's spend belongs to.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="key=value tag on every request.")] = None,
    org: Annotated[str | None, typer.Option("--org", help="Organisation the team belongs to.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="May call the /admin API.")] = False,
    policy: Annotated[
        str | None, typer.Option("--policy", help='JSON policy, e.g. \'{"jurisdictions": ["EU"], "pii": "redact"}\'.')
    ] = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    json: JsonOpt = False,
) -> None:
    """Create an API key. It is printed once; only its hash is stored."""
    from margin import keys
    from margin.governance.rules import parse_policy

    settings = settings_from(config, db)
    try:
        spec = keys.NewKey(name, team, keys.parse_tags(tag or []), org, admin, parse_policy(policy))
        record, key = keys.create_key(_sync_engine(settings), spec)
    except MarginError as exc:
        raise _fail(exc) from exc
    if json:
        print(orjson.dumps({**record.public(), "key": key}).decode())
        return
    console = _console()
    console.print(f"created key [bold]{record.id}[/] for {name} (team {team or '-'})")
    console.print("store it now, it is not shown again:")
    print(key)


@keys_app.command("list")
def keys_list(config: ConfigOpt = None, db: DbOpt = None, json: JsonOpt = False) -> None:
    """List keys (ids, owners, teams, tags, state); never the keys themselves."""
    from margin import keys

    records = keys.list_keys(_sync_engine(settings_from(config, db)))
    if json:
        print(orjson.dumps([{**r.public(), "revoked": r.revoked_at is not None} for r in records]).decode())
        return
    table = Table("id", "name", "team", "org", "tags", "created", "state")
    for r in records:
        tags = ",".join(f"{k}={v}" for k, v in r.tags.items())
        state = ("revoked" if r.revoked_at else "active") + (" admin" if r.is_admin else "")
        table.add_row(r.id, r.name, r.team or "-", r.org or "-", tags or "-", str(r.created_at)[:19], state)
    _console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id.")], config: ConfigOpt = None, db: DbOpt = None
) -> None:
    """Revoke a key (the running gateway stops accepting it within server.key_cache_ttl_s)."""
    from margin import keys

    try:
        record = keys.revoke_key(_sync_engine(settings_from(config, db)), key_id)
    except MarginError as exc:
        raise _fail(exc) from exc
    _console().print(f"revoked key {record.id} ({record.name})")


@app.command()
def report(
    since: Annotated[str | None, typer.Option(help="Start: 24h, 7d, 30m or an ISO date.")] = None,
    until: Annotated[str | None, typer.Option(help="End (exclusive): same forms as --since.")] = None,
    by: Annotated[str | None, typer.Option(help="Group by model|team|feature|customer|backend|key|…")] = None,
    view: Annotated[
        str | None,
        typer.Option(help="summary (default)|overview|margin|tasks|savings|utilization|carbon|timeseries."),
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="Pick the view by metric: margin, attach, cost_per_task, savings, idle, carbon…")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table|json|csv.")] = "table",
    bucket: Annotated[str, typer.Option(help="hour|day, for time series.")] = "day",
    revenue: Annotated[Path | None, typer.Option(help="CSV of revenue (feature,customer,usd) for the window.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Also draw spend, $/1K and savings to a PNG.")] = None,
    team: Annotated[str | None, typer.Option(help="Only this team's rows (its own P&L).")] = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    json: JsonOpt = False,
) -> None:
    """Requests, tokens, $ cost, $/1K tokens, energy, gCO2e and latency from the ledger; with --view/--metric:
    gross margin and attach rate, cost per successful task, savings, utilization and idle cost, carbon."""
    from margin.report.cli import run_report
    from margin.report.queries import Window, parse_when

    settings = settings_from(config, db)
    try:
        window = Window(parse_when(since), parse_when(until), team=team)
        engine, fmt = _sync_engine(settings), "json" if json else fmt
        run_report(_console(), engine, settings, window, view, metric, by, fmt, bucket, revenue, plot)
    except MarginError as exc:
        raise _fail(exc) from exc


@export_app.command("focus")
def export_focus(
    period: Annotated[str, typer.Option(help="Billing month, e.g. 2026-11.")],
    out: Annotated[Path, typer.Option(help="Output file: .csv or .parquet.")],
    account: Annotated[str, typer.Option(help="BillingAccountId/Name to write.")] = "margin",
    tags: Annotated[str, typer.Option(help="Also split charges by these tags: feature,customer (slower).")] = "",
    config: ConfigOpt = None,
    db: DbOpt = None,
) -> None:
    """FOCUS 1.2 cost and usage rows (one per day × key × team × model × backend × region [× tags])."""
    from margin.report.focus import export

    settings = settings_from(config, db)
    try:
        split = tuple(t for t in tags.split(",") if t)
        result = export(_sync_engine(settings), settings, period, out, account, split)
    except MarginError as exc:
        raise _fail(exc) from exc
    note = f"; {result.unpriced_requests} requests at an unknown price left out" if result.unpriced_requests else ""
    _console().print(f"wrote {result.count} FOCUS rows to {out}{note}")


@feedback_app.command("import")
def feedback_import(
    file: Annotated[Path, typer.Argument(help=".jsonl or .csv with request_id,success,score,value.")],
    config: ConfigOpt = None,
    db: DbOpt = None,
) -> None:
    """Record request outcomes in bulk (all or nothing; the latest outcome of a request wins)."""
    from margin.report.cli import import_feedback

    settings = settings_from(config, db)
    try:
        count = import_feedback(_sync_engine(settings), file)
    except MarginError as exc:
        raise _fail(exc) from exc
    _console().print(f"recorded {count} outcomes")


@app.command()
def cost(
    hourly_usd: Annotated[Decimal, typer.Option(help="All-in $/hour of the hardware.")],
    tokens_per_s: Annotated[Decimal, typer.Option(help="Observed throughput (tokens/s).")],
    energy_overhead: Annotated[Decimal, typer.Option(help="Energy & cooling as a share of hourly.")] = Decimal(0),
    network_overhead: Annotated[Decimal, typer.Option(help="Networking as a share of hourly.")] = Decimal(0),
    watts: Annotated[float | None, typer.Option(help="Power draw while serving (W).")] = None,
    pue: Annotated[float, typer.Option(help="Facility PUE (1.1 hyperscale, 1.56 average).")] = 1.0,
    usd_per_kwh: Annotated[Decimal, typer.Option(help="Energy price, added on top when > 0.")] = Decimal(0),
    region: Annotated[str | None, typer.Option(help="Grid zone: ISO alpha-3 (FRA) or gcp:<region>.")] = None,
    json: JsonOpt = False,
) -> None:
    """Self-hosted cost per token (DESIGN §4), with energy and carbon when power is given."""
    from margin.economics.costcalc import cost_command

    try:
        cost_command(
            _console(),
            hourly_usd,
            tokens_per_s,
            energy_overhead,
            network_overhead,
            watts,
            pue,
            usd_per_kwh,
            region,
            json,
        )
    except MarginError as exc:
        raise _fail(exc) from exc


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None, db: DbOpt = None, revision: str = "head") -> None:
    """Apply migrations (the gateway also does this at start)."""
    from margin.ledger import db as dbm

    settings = settings_from(config, db)
    dbm.upgrade(settings.storage.ledger, revision)
    _console().print(f"ledger at revision {dbm.current_revision(settings.storage.ledger)}")


@db_app.command("rebuild-rollups")
def db_rebuild_rollups(config: ConfigOpt = None, db: DbOpt = None) -> None:
    """Recompute every rollup from the ledger rows (after editing rows by hand, or to roll up the tag keys
    now in `tags.rollup_keys`)."""
    from margin.ledger import rollup

    settings = settings_from(config, db)
    engine = _sync_engine(settings)
    try:
        with engine.begin() as connection:
            sizes = rollup.rebuild(connection, settings.tags.rollup_keys)
    finally:
        engine.dispose()
    counts = ", ".join(f"{name} {rows:,}" for name, rows in sizes.items())
    _console().print(f"rollups rebuilt (tag keys: {', '.join(settings.tags.rollup_keys) or 'none'}): {counts}")


@db_app.command("current")
def db_current(config: ConfigOpt = None, db: DbOpt = None) -> None:
    """Show the ledger's migration revision."""
    from margin.ledger import db as dbm

    settings = settings_from(config, db)
    print(dbm.current_revision(settings.storage.ledger) or "empty")


@config_app.command("show")
def config_show(
    default: Annotated[bool, typer.Option(help="Print the embedded default file.")] = False, config: ConfigOpt = None
) -> None:
    """Print the effective configuration (or the embedded default YAML)."""
    import yaml

    from margin.config import config_hash, default_config_text

    if default:
        print(default_config_text(), end="")
        return
    settings = settings_from(config)
    print(f"# config_hash: {config_hash(settings)}")
    print(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False), end="")


@config_app.command("check")
def config_check(config: Annotated[Path, typer.Argument(help="YAML file to validate.")]) -> None:
    """Validate a config file (unknown keys, types, references)."""
    from margin.config import config_hash

    settings = settings_from(config)
    _console().print(
        f"ok: {len(settings.backends)} backends, {len(settings.models)} models, config_hash {config_hash(settings)}"
    )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["app", "main"]
