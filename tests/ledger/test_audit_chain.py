"""The audit log's chain (margin.ledger.audit): appends from many threads stay one chain on SQLite and on
PostgreSQL (migration 0025 there too), an edit names its row, pruning (`audit.retention_days`, `margin audit
prune`) keeps the rest verifiable; the CLI's changes are recorded as `cli:<OS user>`; the denied-write bound."""

from __future__ import annotations

import asyncio
import getpass
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from margin import keyops, keys
from margin.api.audit import DeniedWrites
from margin.cli import app
from margin.config import parse_settings
from margin.errors import ConfigError
from margin.governance.rules import save_rule
from margin.ledger import audit, db
from margin.ledger.models import audit_anchor, audit_log
from tests.helpers import fake_settings, gateway, polls

runner = CliRunner()
ADMIN = audit.Origin("key:0000abcd", "http", "root", "127.0.0.1", "r1")


def _sqlite(path: Path) -> sa.Engine:
    db.upgrade(f"sqlite:///{path}")
    return db.make_sync_engine(f"sqlite:///{path}")


def _appends(engine: sa.Engine, threads: int = 4, each: int = 10) -> None:
    def work(n: int) -> None:
        for i in range(each):
            audit.write(engine, ADMIN, audit.Change("budget.put", f"b{n}-{i}", after={"usd": str(i)}))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))


def test_concurrent_appends_are_one_chain_and_an_edit_names_its_row(db_path: Path) -> None:
    engine = _sqlite(db_path)
    _appends(engine)
    verdict = audit.verify(engine)
    assert (verdict.checked, verdict.broken_at) == (40, None)
    with engine.begin() as connection:
        connection.execute(audit_log.update().where(audit_log.c.id == 17).values(actor="key:someone-else"))
    assert audit.verify(engine).broken_at == 17
    with engine.begin() as connection:  # a deleted row: the next one no longer chains
        connection.execute(audit_log.update().where(audit_log.c.id == 17).values(actor=ADMIN.actor))
        connection.execute(audit_log.delete().where(audit_log.c.id == 30))
    assert audit.verify(engine).broken_at == 31


def _racing_puts(engine: sa.Engine) -> None:
    """Six threads replace one budget 15 times each: each row's `before` is the body the row before it wrote."""

    def work(n: int) -> None:
        for i in range(15):
            body = {"name": "raced", "scope": {"kind": "global"}, "usd": f"{n + 1}.{i:02}"}
            save_rule(engine, "budget", body, ADMIN)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(work, range(6)))
    rows = list(reversed(audit.page(engine, audit.Filters(action="budget.put", target="raced", limit=500))))
    assert len(rows) == 90 and rows[0]["before"] is None
    assert [(row["before"] or {}).get("usd") for row in rows[1:]] == [row["after"]["usd"] for row in rows[:-1]]


def test_racing_changes_of_one_rule_record_what_each_replaced(db_path: Path) -> None:
    engine = _sqlite(db_path)
    _racing_puts(engine)
    assert audit.verify(engine).broken_at is None


def _once(engine: sa.Engine) -> None:
    """`write_unrecorded`: a request with a row since it began gets no second one; another request does."""
    began = datetime.now(UTC)
    failed = audit.Change("budget.put", "cap", "failed", after={"error": "internal_error", "exception": "X"})
    made = audit.write(engine, ADMIN, audit.Change("budget.put", "cap"))
    assert audit.write_unrecorded(engine, ADMIN, failed, began) is None
    other = audit.Origin(ADMIN.actor, "http", request_id="r2")
    assert (written := audit.write_unrecorded(engine, other, failed, began)) is not None and written > made
    assert audit.write_unrecorded(engine, ADMIN, failed, began + timedelta(minutes=5)) is not None  # only since
    assert audit.verify(engine).broken_at is None


def test_a_crashed_request_s_row_is_written_once(db_path: Path) -> None:
    _once(_sqlite(db_path))


def test_postgres_migrates_writes_and_verifies(pg_ledger: sa.Engine) -> None:
    assert {"audit_log", "audit_anchor"} <= set(sa.inspect(pg_ledger).get_table_names())
    record, _ = keys.create_key(pg_ledger, keys.NewKey("svc", team="search"), ADMIN)
    keyops.rotate_key(pg_ledger, record.id, timedelta(seconds=0), ADMIN)
    save_rule(pg_ledger, "budget", {"name": "cap", "scope": {"kind": "global"}, "usd": "5"}, ADMIN)
    _appends(pg_ledger, threads=4, each=5)  # the advisory lock: appends take turns
    _racing_puts(pg_ledger)
    _once(pg_ledger)
    verdict = audit.verify(pg_ledger)
    assert (verdict.checked, verdict.broken_at) == (116, None)
    rows = audit.page(pg_ledger, audit.Filters(action="key.rotate"))
    assert [(r["target"], r["actor"], r["after"]["rotated_at"] is not None) for r in rows] == [
        (record.id, ADMIN.actor, True)
    ]
    with pg_ledger.begin() as connection:
        connection.execute(audit_log.update().where(audit_log.c.id == 3).values(after={"usd": "500"}))
    assert audit.verify(pg_ledger).broken_at == 3
    db.downgrade(str(pg_ledger.url.render_as_string(hide_password=False)), "0024")
    assert "audit_log" not in sa.inspect(pg_ledger).get_table_names()


def test_pruning_keeps_the_rest_verifiable(db_path: Path) -> None:
    engine = _sqlite(db_path)
    _appends(engine, threads=1, each=5)
    with engine.connect() as connection:
        third = utc(connection.execute(sa.select(audit_log.c.at).where(audit_log.c.id == 3)).scalar_one())
    assert audit.prune(engine, 1, now=third + timedelta(days=1, microseconds=1)) == 3
    verdict = audit.verify(engine)
    assert (verdict.checked, verdict.broken_at, verdict.anchored) == (2, None, True)
    audit.write(engine, ADMIN, audit.Change("key.create", "new"))
    assert audit.verify(engine).checked == 3 and audit.verify(engine).broken_at is None
    with engine.begin() as connection:  # the anchor is covered too: the oldest kept row chains from it
        connection.execute(audit_anchor.update().values(hash="0" * 64))
    assert audit.verify(engine).broken_at == 4


def utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _old_rows(engine: sa.Engine, days_ago: list[int]) -> None:
    """Rows written in the past, chained as `record` chains them."""
    previous = ""
    with engine.begin() as connection:
        for n, days in enumerate(days_ago, start=1):
            values: dict[str, Any] = {
                "id": n,
                "at": datetime.now(UTC) - timedelta(days=days),
                "actor": "cli:old",
                "actor_name": None,
                "source": "cli",
                "address": None,
                "action": "budget.put",
                "target": f"old-{n}",
                "request_id": None,
                "outcome": "ok",
                "before": None,
                "after": {"usd": "1"},
            }
            previous = audit.chain(previous, values)
            connection.execute(audit_log.insert().values(**values, hash=previous))


async def test_the_gateway_prunes_at_start_and_then_daily(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _sqlite(db_path)
    _old_rows(engine, [40, 35, 2, 1])
    assert audit.verify(engine).checked == 4
    calls: list[int] = []
    real = audit.prune

    def counted(engine: sa.Engine, days: int, now: datetime | None = None) -> int:
        calls.append(days)
        return real(engine, days, now)

    monkeypatch.setattr(audit, "prune", counted)
    monkeypatch.setattr("margin.app.AUDIT_PRUNE_S", 0.05)  # a day, in the test
    async with gateway(fake_settings(db_path, audit={"retention_days": 30})):
        assert calls == [30]  # before the gateway is ready
        for _ in polls(10):
            if len(calls) >= 3:
                break
            await asyncio.sleep(0.05)
    assert calls[:3] == [30, 30, 30]
    assert [r["target"] for r in audit.page(engine, audit.Filters())] == ["old-4", "old-3"]
    assert audit.verify(engine).broken_at is None


def test_the_cli_records_its_changes_as_the_os_user(db_path: Path) -> None:
    base = ["--db", str(db_path)]
    created = runner.invoke(app, ["keys", "create", "--name", "ops", "--admin", "--json", *base])
    assert created.exit_code == 0, created.output
    key = json.loads(created.output)
    second = runner.invoke(app, ["keys", "create", "--name", "svc", "--json", *base])
    svc = json.loads(second.output)["id"]
    for args in (
        ["keys", "rotate", svc, "--grace", "0"],
        ["keys", "revoke", svc],
        ["budgets", "set", "cap", "--scope", "team=a", "--usd", "3"],
        ["budgets", "delete", "cap"],
        ["limits", "set", "--scope", "team=a", "--rpm", "5"],
        ["flags", "set", "f", "--target", "global", "--action", "disable"],
    ):
        assert runner.invoke(app, [*args, *base]).exit_code == 0
    listed = runner.invoke(app, ["audit", "list", "--json", *base])
    rows = json.loads(listed.output)
    actions = [(r["action"], r["target"]) for r in reversed(rows)]
    assert actions == [
        ("key.create", key["id"]),
        ("key.create", svc),
        ("key.rotate", svc),
        ("key.revoke", svc),
        ("budget.put", "cap"),
        ("budget.delete", "cap"),
        ("limit.put", "team=a"),
        ("flag.put", "f"),
    ]
    assert {(r["actor"], r["source"]) for r in rows} == {(f"cli:{getpass.getuser()}", "cli")}
    assert key["key"] not in listed.output
    only = json.loads(runner.invoke(app, ["audit", "list", "--json", "--action", "key.revoke", *base]).output)
    assert [r["target"] for r in only] == [svc]
    bad = runner.invoke(app, ["audit", "list", "--limit", "0", *base])
    assert bad.exit_code == 2 and "limit" in bad.output
    verified = runner.invoke(app, ["audit", "verify", "--json", *base])
    assert verified.exit_code == 0 and json.loads(verified.output)["checked"] == 8
    pruned = runner.invoke(app, ["audit", "prune", "--days", "1", *base])
    assert pruned.exit_code == 0 and "pruned 0" in pruned.output


def test_denied_writes_are_bounded_per_address_and_in_all() -> None:
    gate = DeniedWrites(per_address=2, total=3)
    assert [gate.admit("a", 1) for _ in range(4)] == [0, 0, None, None]
    assert gate.admit("b", 1) == 2  # two of a's were skipped before it
    assert gate.admit("c", 1) is None  # three in all this minute
    assert gate.admit("a", 2) == 1 and len(gate.counts) == 1  # a new minute; the skipped one is counted


def test_the_audit_config_is_typed_and_closed() -> None:
    assert parse_settings({"audit": {"retention_days": 90}}).audit.retention_days == 90
    assert parse_settings({}).audit.retention_days is None
    for bad, named in (({"retention_days": 0}, "retention_days"), ({"retention_days": "ever"}, ""), ({"k": 1}, "k")):
        with pytest.raises(ConfigError, match=f"audit.{named}"):
            parse_settings({"audit": bad})
