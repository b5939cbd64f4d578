"""`margin batches list|show|plan|cancel`: the operator's view of batch jobs, read from the ledger database
(a running gateway's worker picks a cancellation up within `batches.poll_s`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from margin.cli.options import ConfigOpt, DbOpt, JsonOpt, fail, read_engine, settings_from, sync_engine
from margin.errors import MarginError, NotFound

app = typer.Typer(no_args_is_help=True, help="Batch jobs (the OpenAI Batch API): progress, schedules, cancel.")


def _run(action: Callable[[Any, Any], Any], config: Path | None, db: Path | None, *, writes: bool) -> Any:
    """`action(engine, settings)` on the ledger: migrated first where it `writes`, else read-only, unmigrated."""
    settings = settings_from(config, db)
    engine = sync_engine(settings) if writes else read_engine(settings)
    try:
        return action(engine, settings)
    except MarginError as exc:
        raise fail(exc) from exc
    finally:
        engine.dispose()


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M")


def _job(engine: Any, batch_id: str) -> Any:
    import sqlalchemy as sa

    from margin.ledger.models import batches

    with engine.connect() as connection:
        row = connection.execute(sa.select(batches).where(batches.c.id == batch_id)).first()
    if row is None:
        raise NotFound(f"no batch {batch_id!r}")
    return row


def _ledger(engine: Any, batch_id: str) -> dict[str, Any]:
    """What the job's lines cost, saved and emitted, and the grid intensity they ran at (ledger rows)."""
    import sqlalchemy as sa

    from margin.economics.money import from_nanousd, usd_str
    from margin.ledger.models import ledger

    c = ledger.c
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(c.cost_nanousd), 0),
                sa.func.coalesce(sa.func.sum(c.discount_nanousd), 0),
                sa.func.coalesce(sa.func.sum(c.co2e_g), 0.0),
                sa.func.avg(c.grid_g_per_kwh),
                sa.func.sum(c.input_tokens + c.output_tokens),
            ).where(c.batch_id == batch_id)
        ).one()
    return {
        "ledger_rows": int(row[0]),
        "cost_usd": usd_str(from_nanousd(int(row[1]))),
        "discount_usd": usd_str(from_nanousd(int(row[2]))),
        "co2e_g": round(float(row[3]), 9),
        "mean_grid_g_per_kwh": None if row[4] is None else round(float(row[4]), 3),
        "tokens": int(row[5] or 0),
    }


@app.command("list")
def list_jobs(
    config: ConfigOpt = None,
    db: DbOpt = None,
    json: JsonOpt = False,
    limit: Annotated[int, typer.Option(help="Most recent jobs shown.")] = 50,
) -> None:
    """Jobs, newest first: status, progress, model, deadline, schedule."""
    import sqlalchemy as sa

    from margin.batches.objects import batch_object
    from margin.ledger.models import batches

    def read(engine: Any, _: Any) -> list[Any]:
        with engine.connect() as connection:
            query = sa.select(batches).order_by(batches.c.created_at.desc()).limit(limit)
            return list(connection.execute(query))

    rows = _run(read, config, db, writes=False)
    if json:
        typer.echo(orjson.dumps([{**batch_object(r), "key_id": r.key_id} for r in rows]).decode())
        return
    table = Table("id", "status", "key", "model", "done/failed/total", "created", "expires", "objective", "next window")
    for r in rows:
        windows = (r.plan or {}).get("windows") or []
        upcoming = [w["start"][:16] for w in windows if w["end"] > datetime.now(UTC).isoformat()]
        table.add_row(
            r.id,
            r.status,
            r.key_id or "-",
            r.model or "-",
            f"{r.completed}/{r.failed}/{r.total}",
            _when(r.created_at),
            _when(r.expires_at),
            (r.plan or {}).get("objective", "-"),
            upcoming[0] if upcoming else "-",
        )
    Console(highlight=False, width=200).print(table)


@app.command()
def show(batch_id: str, config: ConfigOpt = None, db: DbOpt = None, json: JsonOpt = False) -> None:
    """One job: the OpenAI object, its lines by status and what its ledger rows say."""
    from margin.batches.objects import batch_object

    def read(engine: Any, _: Any) -> dict[str, Any]:
        from margin.batches.store import counts_query

        row = _job(engine, batch_id)
        lines = row.line_counts  # kept on the row once the job ended (its line rows are deleted then)
        if lines is None:
            with engine.connect() as connection:
                lines = {str(status): int(n) for status, n in connection.execute(counts_query(batch_id))}
        return {**batch_object(row, live_counts=lines), "key_id": row.key_id, "ledger": _ledger(engine, batch_id)}

    found = _run(read, config, db, writes=False)
    if json:
        typer.echo(orjson.dumps(found).decode())
        return
    console = Console(highlight=False)
    counts = found["request_counts"]
    console.print(f"[bold]{found['id']}[/] {found['status']}  {found['endpoint']}  model {found['model'] or '-'}")
    console.print(f"lines: {counts['completed']} done, {counts['failed']} failed, {counts['total']} in all")
    console.print(f"by status: {(found.get('margin') or {}).get('lines')}")
    console.print(f"output file {found['output_file_id'] or '-'}, error file {found['error_file_id'] or '-'}")
    console.print(f"ledger: {found['ledger']}")


@app.command()
def plan(
    batch_id: str,
    config: ConfigOpt = None,
    db: DbOpt = None,
    json: JsonOpt = False,
    objective: Annotated[
        str | None,
        typer.Option(help="Re-plan what is left now with carbon|cost|asap (prints; the job keeps its plan)."),
    ] = None,
) -> None:
    """The job's windows (deployment, hours, tokens, gCO2e, $) and the saving against running it now."""

    def read(engine: Any, settings: Any) -> dict[str, Any]:
        row = _job(engine, batch_id)
        if objective is None:
            return dict(row.plan or {})
        return _replan(engine, settings, row, objective)

    found = _run(read, config, db, writes=False)
    if json:
        typer.echo(orjson.dumps(found).decode())
        return
    _print_plan(found, batch_id)


def _replan(engine: Any, settings: Any, row: Any, objective: str) -> dict[str, Any]:
    import sqlalchemy as sa

    from margin.batches.planning import Placed, Planner, line_tokens, options_for
    from margin.batches.store import utc
    from margin.economics.carbon import GridTable
    from margin.economics.meter import Meter
    from margin.economics.prices import PriceBook
    from margin.ledger.models import batch_lines

    if objective not in ("carbon", "cost", "asap"):
        raise typer.BadParameter("objective is carbon, cost or asap")
    with engine.connect() as connection:
        bodies = connection.execute(
            sa.select(batch_lines.c.body).where(batch_lines.c.batch_id == row.id, batch_lines.c.status == "pending")
        ).scalars()
        work = sum(line_tokens(body, settings.batches.assumed_output_tokens) for body in bodies)
    targets = Placed.all(settings)
    options = options_for(settings, targets, row.model or "", None)
    if not options:
        raise NotFound(f"model {row.model!r} of {row.id} is not in this config")
    meter = Meter(settings, GridTable.bundled(), PriceBook())
    now = datetime.now(UTC)
    return Planner(settings, meter).plan(options, max(work, 1), now, utc(row.expires_at) or now, {}, objective)


def _print_plan(found: dict[str, Any], batch_id: str) -> None:
    from margin.batches.planning import saving_text

    console = Console(highlight=False, width=200)
    if not found:
        console.print(f"{batch_id} has no plan (not validated yet, or its model has no deployment to plan)")
        return
    console.print(f"objective {found['objective']}, {found['tokens']} tokens estimated, deadline {found['deadline']}")
    table = Table("model", "backend", "region", "start (UTC)", "end", "tokens", "gCO2e", "$")
    for w in found["windows"]:
        table.add_row(
            w["model"],
            w["backend"],
            w["region"],
            w["start"][:16],
            w["end"][11:16],
            str(w["tokens"]),
            str(w["co2e_g"]),
            str(w["cost_usd"]),
        )
    console.print(table)
    estimate, now = found["estimate"], found["run_now"]
    console.print(f"planned: {estimate['co2e_g']} gCO2e, ${estimate['cost_usd']}")
    console.print(f"running now on {now['model']}: {now['co2e_g']} gCO2e, ${now['cost_usd']}")
    console.print(f"saving versus now: {saving_text(found)} (before the batch discount of {found['discount']})")
    if found.get("unplaced_tokens"):
        console.print(f"[yellow]{found['unplaced_tokens']} tokens did not fit before the deadline[/]")


@app.command()
def cancel(batch_id: str, config: ConfigOpt = None, db: DbOpt = None) -> None:
    """Cancel a job (validating or in progress): no new line starts; lines in flight finish."""
    from margin.batches.store import cancel_statement

    def write(engine: Any, _: Any) -> str:
        with engine.begin() as connection:
            connection.execute(cancel_statement(batch_id, datetime.now(UTC)))
        return str(_job(engine, batch_id).status)

    status = _run(write, config, db, writes=True)
    Console(highlight=False).print(f"{batch_id}: {status}")
    if status not in ("cancelling", "cancelled"):
        raise typer.Exit(2)
