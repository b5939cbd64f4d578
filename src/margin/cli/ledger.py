"""Commands over the ledger: `margin report`, `export focus`, `feedback import`, `cost`,
`db upgrade|current|rebuild-rollups|index-tags`."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer

from margin.cli.options import ConfigOpt, DbOpt, JsonOpt, console, fail, reading, settings_from, sync_engine
from margin.errors import MarginError

export_app = typer.Typer(no_args_is_help=True, help="Export the ledger (FOCUS 1.2).")
feedback_app = typer.Typer(no_args_is_help=True, help="Request outcomes (success, score, value).")
db_app = typer.Typer(no_args_is_help=True, help="Ledger database migrations.")


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
    team: Annotated[
        str | None, typer.Option(help="Only this team's rows (its own P&L); with --org if several orgs have it.")
    ] = None,
    org: Annotated[
        str | None, typer.Option(help="Only this org's rows, or its team's with --team ('' = no org).")
    ] = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    json: JsonOpt = False,
) -> None:
    """Requests, tokens, $ cost, $/1K tokens, energy, gCO2e and latency from the ledger; with --view/--metric:
    gross margin and attach rate, cost per successful task, savings, utilization and idle cost, carbon.

    Reads the ledger without writing to it; exit 3: the ledger is at another revision (`margin db upgrade`)."""
    from margin.ledger.read.window import parse_span, scoped
    from margin.report.cli import run_report
    from margin.report.queries import Window

    settings = settings_from(config, db)
    try:
        window = Window(*parse_span(since, until))
        with reading(settings) as engine:
            with engine.connect() as connection:
                window = scoped(connection, window, team, org)
            fmt = "json" if json else fmt
            run_report(console(), engine, settings, window, view, metric, by, fmt, bucket, revenue, plot)
    except MarginError as exc:
        raise fail(exc) from exc


@export_app.command("focus")
def export_focus(
    period: Annotated[str, typer.Option(help="Billing month, e.g. 2026-11.")],
    out: Annotated[Path, typer.Option(help="Output file: .csv or .parquet.")],
    account: Annotated[str, typer.Option(help="BillingAccountId/Name to write.")] = "margin",
    tags: Annotated[str, typer.Option(help="Also split charges by these tags: feature,customer (slower).")] = "",
    config: ConfigOpt = None,
    db: DbOpt = None,
) -> None:
    """FOCUS 1.2 cost and usage rows (one per day × key × team × model × backend × region [× tags]).

    Reads the ledger without writing to it; exit 3: the ledger is at another revision (`margin db upgrade`)."""
    from margin.report.focus import export

    settings = settings_from(config, db)
    try:
        split = tuple(t for t in tags.split(",") if t)
        with reading(settings) as engine:
            result = export(engine, settings, period, out, account, split)
    except MarginError as exc:
        raise fail(exc) from exc
    note = f"; {result.unpriced_requests} requests at an unknown price left out" if result.unpriced_requests else ""
    console().print(f"wrote {result.count} FOCUS rows to {out}{note}")


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
        count = import_feedback(sync_engine(settings), file)
    except MarginError as exc:
        raise fail(exc) from exc
    console().print(f"recorded {count} outcomes")


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
            console(),
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
        raise fail(exc) from exc


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None, db: DbOpt = None, revision: str = "head") -> None:
    """Apply migrations (the gateway also does this at start)."""
    from margin.ledger import db as dbm

    settings = settings_from(config, db)
    dbm.upgrade(settings.storage.ledger, revision)
    console().print(f"ledger at revision {dbm.current_revision(settings.storage.ledger)}")


@db_app.command("rebuild-rollups")
def db_rebuild_rollups(config: ConfigOpt = None, db: DbOpt = None) -> None:
    """Recompute every rollup from the ledger rows (after editing rows by hand, or to roll up the tag keys
    now in `tags.rollup_keys`)."""
    from margin.ledger import rollup

    settings = settings_from(config, db)
    engine = sync_engine(settings)
    try:
        with engine.begin() as connection:
            sizes = rollup.rebuild(connection, settings.tags.rollup_keys)
    finally:
        engine.dispose()
    counts = ", ".join(f"{name} {rows:,}" for name, rows in sizes.items())
    console().print(f"rollups rebuilt (tag keys: {', '.join(settings.tags.rollup_keys) or 'none'}): {counts}")


@db_app.command("index-tags")
def db_index_tags(config: ConfigOpt = None, db: DbOpt = None) -> None:
    """Index the ledger by the values of the tag keys in `tags.indexed_keys` (per-tag-value budgets read them),
    dropping the indexes of other keys. Each new index reads every row once, committed on its own: the gateways'
    writes wait for one index at a time on SQLite (~1-3 s per million rows), not at all on PostgreSQL
    (CONCURRENTLY); an interrupted run is finished by running it again."""
    from margin.ledger import tag_index

    settings = settings_from(config, db)
    engine = sync_engine(settings)
    try:
        tag_index.sync_steps(engine, settings.tags.indexed_keys)
        with engine.connect() as connection:
            indexes = sorted(tag_index.existing(connection))
    finally:
        engine.dispose()
    console().print(f"tag-value indexes: {', '.join(indexes) or 'none'}")


@db_app.command("current")
def db_current(config: ConfigOpt = None, db: DbOpt = None) -> None:
    """Show the ledger's migration revision."""
    from margin.ledger import db as dbm

    settings = settings_from(config, db)
    print(dbm.current_revision(settings.storage.ledger) or "empty")
