"""A per-tag-value budget's spend (`customer=*`) read through the tag key's index (margin.ledger.tag_index), on
both databases: the same answer as the full scan of the window it replaced (bound tags only, request rows
only, the window, usd or tokens), the query plan names the index, and the indexes are those of
`tags.indexed_keys` (migration 0027: customer; `margin db index-tags`)."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from margin.cli import app
from margin.ledger import db, ingest, rollup, tag_index
from margin.ledger.models import api_keys, ledger
from margin.ledger.read import Window
from margin.ledger.read.budget import budget_spent
from tests.helpers import fake_settings, gateway
from tests.report.ledgers import at, complete, row

CUSTOMERS = ("acme", "globex", "initech", "umbrella")
KEYS = {  # key → its tags: bound to every customer, to acme alone, and one whose customer tags are labels
    "k-star": {"customer": "*"},
    "k-acme": {"customer": "acme"},
    "k-label": {"feature": "*"},
}
WINDOWS = [(at(1), at(16)), (at(3, 7, 30), at(9, 2)), (None, None), (at(16), at(30))]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path / 't.db'}" if request.param == "sqlite" else request.getfixturevalue("fresh_postgres")
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    with engine.begin() as connection:
        keys = [{"id": k, "name": k, "key_hash": k, "tags": t, "created_at": at(1)} for k, t in KEYS.items()]
        connection.execute(api_keys.insert(), keys)
    yield engine
    engine.dispose()


def varied(n: int, seed: int = 3) -> list[dict[str, Any]]:
    """Bound, fixed-bound, label-only and keyless (open mode) rows of several customers, cache hits, rows
    without the tag, rows before, at the end of and after the windows, another tag key (`project`)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        key = rng.choice([*KEYS, None])
        customer = "acme" if key == "k-acme" else rng.choice(CUSTOMERS)
        tags = {"customer": customer, "project": f"p{rng.randrange(3)}"} if rng.random() < 0.9 else {}
        created = at(1) + timedelta(minutes=rng.randrange(0, 29 * 24 * 60))
        if i % 17 == 0:
            created = at(16)  # exactly a window's end (excluded) and the next one's start
        kind = "cache_hit" if rng.random() < 0.15 else "request"
        out.append(row(f"r{i}", key_id=key, kind=kind, tags=tags, created_at=created,
                       cost_nanousd=rng.randrange(1, 10_000), input_tokens=rng.randrange(1, 500),
                       output_tokens=rng.randrange(1, 200)))  # fmt: skip
    return out


def full_scan(connection: sa.Connection, tag: str, usd: bool, since: datetime | None, until: datetime | None) -> int:
    """The read before the index (every request row of the window, the tag from the JSON by SQLAlchemy's path)."""
    name, _, wanted = tag.partition("=")
    measure = ledger.c.cost_nanousd if usd else ledger.c.input_tokens + ledger.c.output_tokens
    bound = sa.select(api_keys.c.id).where(api_keys.c.tags[name].as_string().is_not(None))
    governed = sa.or_(ledger.c.key_id.is_(None), ledger.c.key_id.in_(bound.scalar_subquery()))
    query = sa.select(sa.func.coalesce(sa.func.sum(measure), 0)).where(
        *Window(since, until).where(kinds=("request",)), governed, ledger.c.tags[name].as_string() == wanted
    )
    return int(connection.execute(query).scalar_one())


def by_hand(rows: list[dict[str, Any]], tag: str, usd: bool, since: datetime | None, until: datetime | None) -> int:
    name, _, wanted = tag.partition("=")
    total = 0
    for r in rows:
        bound = r["key_id"] is None or name in KEYS[r["key_id"]]
        inside = (since is None or r["created_at"] >= since) and (until is None or r["created_at"] < until)
        if r["kind"] == "request" and bound and inside and r["tags"].get(name) == wanted:
            total += r["cost_nanousd"] if usd else r["input_tokens"] + r["output_tokens"]
    return total


def test_tag_spent_equals_the_full_scan(engine: sa.Engine) -> None:
    rows = varied(600)
    with engine.begin() as connection:
        ingest.ingest_batch(connection, [complete(r) for r in rows])
    checked = 0
    with engine.connect() as connection:
        assert tag_index.existing(connection) == {"ix_ledger_tag_customer"}
        for tag in [*(f"customer={c}" for c in CUSTOMERS), "customer=nobody", "project=p1", "customer="]:
            for since, until in WINDOWS:
                for usd in (True, False):
                    spent = budget_spent(connection, "tag", tag, usd, since, until)
                    assert spent == full_scan(connection, tag, usd, since, until)
                    assert spent == by_hand(rows, tag, usd, since, until)
                    checked += spent > 0
    assert checked >= 30  # most reads found rows: the comparison is not of zeros
    with engine.connect() as connection:  # a label (k-label's customer tags) and cache hits never count
        everything = sum(by_hand(rows, f"customer={c}", True, None, None) for c in CUSTOMERS)
        tagged = sum(r["cost_nanousd"] for r in rows if r["kind"] == "request" and r["tags"].get("customer"))
        assert 0 < everything < tagged


def statements_of(engine: sa.Engine, read: Any) -> list[tuple[str, Any]]:
    """The SQL (and parameters) `read` sends to the database."""
    sent: list[tuple[str, Any]] = []

    def record(connection: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        sent.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        read()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    return sent


def plan(connection: sa.Connection, statement: str, parameters: Any) -> str:
    explain = "EXPLAIN QUERY PLAN" if connection.dialect.name == "sqlite" else "EXPLAIN"
    return "\n".join(str(r) for r in connection.exec_driver_sql(f"{explain} {statement}", parameters))


def test_the_spend_of_one_tag_value_reads_its_index(engine: sa.Engine) -> None:
    """On a ledger of 100 customers (open mode: every tag counts), the budget's statement reads the tag key's
    index, not the window's rows by time (PostgreSQL once its statistics are gathered, as autovacuum does;
    SQLite with and without them); a tag key that has no index still answers."""
    rng = random.Random(5)
    rows = [
        complete(row(f"b{i}", key_id=None, tags={"customer": f"c{rng.randrange(100)}", "project": "p"},
                     created_at=at(1) + timedelta(seconds=i * 60), cost_nanousd=i))
        for i in range(4_000)
    ]  # fmt: skip
    with engine.begin() as connection:
        connection.execute(ledger.insert(), rows)
    if engine.dialect.name == "sqlite":  # SQLite's planner without statistics (no ANALYZE has run) too
        with engine.connect() as connection:
            sent = statements_of(engine, lambda: budget_spent(connection, "tag", "customer=c7", True, at(1), at(30)))
            [(statement, parameters)] = [s for s in sent if "ledger.created_at" in s[0]]
            assert "USING INDEX ix_ledger_tag_customer" in plan(connection, statement, parameters)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("ANALYZE")
    with engine.connect() as connection:
        for tag, index in (("customer=c7", "ix_ledger_tag_customer"), ("project=p", None)):
            sent = statements_of(engine, lambda t=tag: budget_spent(connection, "tag", t, True, at(1), at(30)))
            [(statement, parameters)] = [s for s in sent if "ledger.created_at" in s[0]]
            found = plan(connection, statement, parameters)
            if index is not None:
                assert index in found, found
                assert budget_spent(connection, "tag", tag, True, at(1), at(30)) == sum(
                    r["cost_nanousd"] for r in rows if r["tags"]["customer"] == "c7"
                )
            else:
                assert "ix_ledger_tag_" not in found, found
                assert budget_spent(connection, "tag", tag, True, at(1), at(30)) == sum(r["cost_nanousd"] for r in rows)


def test_the_indexes_follow_the_keys_they_are_synced_to(engine: sa.Engine) -> None:
    """`margin db index-tags` (tag_index.sync) drops the indexes of keys no longer listed and makes the new ones;
    a key of 64 characters gets a name PostgreSQL keeps whole (63 bytes at most); rebuilding the rollups leaves
    the indexes as they are."""
    long_key = "k" * 64
    with engine.begin() as connection:
        tag_index.sync(connection, ["project", long_key])
        rollup.rebuild(connection, ("feature",))
    with engine.connect() as connection:
        assert tag_index.existing(connection) == {"ix_ledger_tag_project", tag_index.name(long_key)}
    assert len(tag_index.name(long_key)) <= 63 and tag_index.name(long_key) != tag_index.name("k" * 63)
    with engine.begin() as connection:
        tag_index.sync(connection, [])
    with engine.connect() as connection:
        assert tag_index.existing(connection) == set()


def test_index_tags_command_indexes_the_configured_keys(db_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "margin.yaml"
    config.write_text("tags:\n  indexed_keys: [customer, tenant]\n")
    result = CliRunner().invoke(app, ["db", "index-tags", "--config", str(config), "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    assert "ix_ledger_tag_customer, ix_ledger_tag_tenant" in result.output
    engine = db.make_sync_engine(f"sqlite:///{db_path}")
    with engine.connect() as connection:
        assert tag_index.existing(connection) == {"ix_ledger_tag_customer", "ix_ledger_tag_tenant"}
    engine.dispose()


def test_0027_indexes_customer_and_its_downgrade_drops_every_tag_index(engine: sa.Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    with engine.begin() as connection:
        tag_index.sync(connection, ["customer", "tenant"])
    db.downgrade(url, "0026")
    with engine.connect() as connection:
        assert tag_index.existing(connection) == set()
    db.upgrade(url)
    with engine.connect() as connection:
        assert tag_index.existing(connection) == {"ix_ledger_tag_customer"}
        if connection.dialect.name == "sqlite":
            query = "SELECT sql FROM sqlite_master WHERE name = 'ix_ledger_tag_customer'"
        else:
            query = "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_ledger_tag_customer'"
        definition = connection.exec_driver_sql(query).scalar_one().lower()
        assert "customer" in definition and "created_at" in definition and "is not null" in definition


async def test_tag_indexes_unlike_the_config_are_named_at_start(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A budget per value of a tag key the ledger has no index for rebuilds each counter by reading its whole
    window, and indexes other than `tags.indexed_keys` wait for `margin db index-tags`: the gateway says both
    when it starts; a budget on an indexed key (customer) is not named."""
    budgets = [
        {"name": "each-project", "scope": {"kind": "tag", "value": "project=*"}, "usd": 1, "period": "month"},
        {"name": "each-customer", "scope": {"kind": "tag", "value": "customer=*"}, "usd": 1, "period": "month"},
    ]
    settings = fake_settings(db_path, budgets=budgets, tags={"indexed_keys": ["customer", "project"]})
    with caplog.at_level(logging.WARNING, logger="margin"):
        async with gateway(settings):
            pass
    messages = [r.getMessage() for r in caplog.records]
    [unindexed] = [m for m in messages if "no index for" in m]
    assert "each-project" in unindexed and "each-customer" not in unindexed
    [differs] = [m for m in messages if "run `margin db index-tags`" in m and "indexed_keys is" in m]
    assert "'project'" in differs and "ix_ledger_tag_customer" in differs
