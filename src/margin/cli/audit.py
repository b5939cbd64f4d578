"""`margin audit list|verify|prune`: the audit log of administrative changes (margin.ledger.audit)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import orjson
import typer
from rich.table import Table

from margin.cli.options import ConfigOpt, DbOpt, JsonOpt, console, fail, reading, settings_from, sync_engine
from margin.errors import MarginError
from margin.terminal import plain

audit_app = typer.Typer(no_args_is_help=True, help="The audit log of admin changes: list, verify, prune.")


@audit_app.command("list")
def audit_list(
    since: Annotated[str | None, typer.Option("--since", help="From: ISO 8601, a date, or a span back (7d).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Until (exclusive), as --since.")] = None,
    action: Annotated[str | None, typer.Option("--action", help="key.create, budget.put, config.reload, …")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="key:<id>, cli:<user>, signal:SIGHUP, …")] = None,
    target: Annotated[str | None, typer.Option("--target", help="A key id or a rule's name.")] = None,
    limit: Annotated[str, typer.Option("--limit", help="At most this many rows (1 to 500).")] = "50",
    config: ConfigOpt = None,
    db: DbOpt = None,
    json: JsonOpt = False,
) -> None:
    """Rows newest first, validated as `GET /admin/audit` validates its query."""
    from margin.api.audit import filters
    from margin.ledger import audit

    given = {"since": since, "until": until, "action": action, "actor": actor, "target": target, "limit": limit}
    try:
        wanted = filters({name: value for name, value in given.items() if value is not None})
        with reading(settings_from(config, db)) as engine:
            rows = audit.page(engine, wanted)
    except MarginError as exc:
        raise fail(exc) from exc
    if json:
        print(orjson.dumps(rows).decode())
        return
    table = Table("id", "at", "actor", "source", "action", "target", "outcome")
    for row in rows:
        cells = (row["actor"], row["source"], row["action"], row["target"] or "-", row["outcome"])
        table.add_row(str(row["id"]), row["at"][:19], *(plain(cell) for cell in cells))
    console().print(table)


@audit_app.command("verify")
def audit_verify(config: ConfigOpt = None, db: DbOpt = None, json: JsonOpt = False) -> None:
    """Walk the hash chain; exit 1 naming the first row that does not match. Keep the head hash elsewhere: a
    writer of the database could rewrite the whole chain, which only an outside copy of the head shows."""
    from margin.ledger import audit

    with reading(settings_from(config, db)) as engine:
        verdict = audit.verify(engine)
    if json:
        print(orjson.dumps({"ok": verdict.broken_at is None, **asdict(verdict)}).decode())
    elif verdict.broken_at is None:
        start = " (from the pruned boundary)" if verdict.anchored else ""
        console().print(f"audit log intact: {verdict.checked} rows{start}, head hash {verdict.head}")
    else:
        broken = f"audit log broken at row {verdict.broken_at}: its hash does not match"
        raise fail(f"{broken} ({verdict.checked} rows before it do)", code=1)
    if verdict.broken_at is not None:
        raise typer.Exit(1)


@audit_app.command("prune")
def audit_prune(
    days: Annotated[
        int | None, typer.Option("--days", min=1, help="Older than this (default audit.retention_days).")
    ] = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
) -> None:
    """Delete rows older than --days (or audit.retention_days), keeping the chain verifiable."""
    from margin.ledger import audit

    settings = settings_from(config, db)
    days = days if days is not None else settings.audit.retention_days
    if days is None:
        raise fail("give --days, or set audit.retention_days")
    gone = audit.prune(sync_engine(settings, existing=True), days)
    console().print(f"pruned {gone} audit rows older than {days} days")
