"""The batched writer: idempotent by (request_id, kind), keeps rows when a commit fails, drains on close."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from margin.ledger import db
from margin.ledger.models import ledger
from margin.ledger.store import LedgerWriter


def row(request_id: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "request_id": request_id,
        "kind": "request",
        "created_at": datetime.now(UTC),
        "tags": {},
        "endpoint": "chat.completions",
        "status": "ok",
        "http_status": 200,
        "stream": False,
        "input_tokens": 1,
        "output_tokens": 2,
        "cached_tokens": 0,
        "e2e_ms": 1.0,
        "cost_status": "priced",
        "cost_nanousd": 10,
        "config_hash": "h",
    }
    return {**{c.name: None for c in ledger.columns if c.name != "id"}, **base, **fields}


async def count(engine: Any) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(sa.select(sa.func.count()).select_from(ledger))).scalar_one())


async def test_replayed_rows_are_written_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    db.upgrade(url)
    engine = db.make_async_engine(url)
    writer = LedgerWriter(url)
    for request_id in ("a", "b", "a"):
        writer.submit(row(request_id))
    assert await writer.flush() == 3
    writer.submit(row("b"))
    writer.submit(row("b", kind="refund"))
    await writer.flush()
    assert await count(engine) == 3  # a, b, and b's refund
    await writer.close()
    await engine.dispose()


async def test_failed_flush_keeps_rows_and_close_drains(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    engine = db.make_async_engine(url)  # no migration yet: the table does not exist
    writer = LedgerWriter(url, interval_s=0.01)
    writer.start()
    writer.submit(row("x"))
    assert await writer.flush() == 0
    assert writer.pending == 1 and writer.failures >= 1
    db.upgrade(url)  # the database comes back
    writer.submit(row("y"))
    await writer.close()
    assert writer.pending == 0
    assert await count(engine) == 2
    await engine.dispose()


async def test_rows_read_back_through_sqlalchemy_types(tmp_path: Path) -> None:
    """The fast SQLite sink stores values the way SQLAlchemy reads them (datetime, JSON, booleans)."""
    url = f"sqlite:///{tmp_path / 'w.db'}"
    db.upgrade(url)
    writer = LedgerWriter(url)
    when = datetime(2026, 11, 23, 12, 30, 5, 123456, tzinfo=UTC)
    writer.submit(row("typed", created_at=when, tags={"feature": "search"}, stream=True, energy_j=1.5))
    await writer.close()
    engine = db.make_async_engine(url)
    async with engine.connect() as connection:
        stored = (await connection.execute(sa.select(ledger))).one()
    await engine.dispose()
    assert stored.created_at == when.replace(tzinfo=None)
    assert stored.tags == {"feature": "search"} and stored.stream is True and stored.energy_j == 1.5
