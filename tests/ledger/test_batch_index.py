"""Migration 0030: the ledger's batch_id index holds only batch lines' rows, and their reads still use it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from margin.ledger import db, ingest
from margin.ledger.models import ledger
from margin.ledger.read.charges import charges
from margin.ledger.read.window import Window
from tests.ledger.test_migrations import schema_diff

DEFINITION = {
    "sqlite": "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name",
    "postgresql": "SELECT indexdef FROM pg_indexes WHERE indexname = :name",
}


def _rows(now: datetime) -> list[dict[str, Any]]:
    """Ten live requests and three lines of one batch job (a discount each), on one priced model."""
    return [
        {"request_id": f"r{i}", "kind": "request", "created_at": now - timedelta(hours=30, minutes=i),
         "model": "m", "backend": "b", "status": "ok", "endpoint": "chat.completions", "tags": {},
         "http_status": 200, "stream": False, "input_tokens": 1, "output_tokens": 1, "cached_tokens": 0,
         "e2e_ms": 1.0, "cost_status": "ok", "config_hash": "h", "cost_nanousd": 100 + i,
         "batch_id": "batch_1" if i >= 10 else None, "discount_nanousd": 50 if i >= 10 else None}
        for i in range(13)
    ]  # fmt: skip


def _definition(connection: sa.Connection, name: str) -> str | None:
    found = connection.execute(sa.text(DEFINITION[connection.dialect.name]), {"name": name}).scalar()
    return None if found is None else str(found).lower()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_0030_keeps_only_batch_lines_in_the_batch_index_and_back(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The index is partial (`batch_id IS NOT NULL`): live traffic's rows are not in it. A job's rows and a
    window's batch discounts read the same as before (SQLite's plans name the index), the schema still equals
    the declared tables, and the downgrade brings back the index of every row."""
    url = f"sqlite:///{tmp_path / 'b.db'}" if dialect == "sqlite" else request.getfixturevalue("fresh_postgres")
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with engine.begin() as connection:
        ingest.ingest_batch(connection, _rows(now))  # with the rollups
    job = sa.select(sa.func.count(), sa.func.sum(ledger.c.cost_nanousd)).where(ledger.c.batch_id == "batch_1")
    with engine.connect() as connection:
        assert schema_diff(connection) == []
        assert _definition(connection, "ix_ledger_batch") is None
        definition = _definition(connection, "ix_ledger_batch_lines") or ""
        assert "where" in definition and "batch_id is not null" in definition
        assert tuple(connection.execute(job).one()) == (3, 110 + 111 + 112)
        window = Window(now - timedelta(days=3), now)  # whole days from the rollup, their discounts from rows
        assert sum(charge.discount_nanousd or 0 for charge in charges(connection, window)) == 150
        if dialect == "sqlite":
            compiled = job.compile(engine, compile_kwargs={"literal_binds": True})
            plan = " ".join(map(str, connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()))
            assert "ix_ledger_batch_lines" in plan
    db.downgrade(url, "0029")
    with engine.connect() as connection:
        assert _definition(connection, "ix_ledger_batch_lines") is None
        old = _definition(connection, "ix_ledger_batch") or ""
        assert "batch_id" in old and "where" not in old
        assert tuple(connection.execute(job).one()) == (3, 110 + 111 + 112)
    engine.dispose()
