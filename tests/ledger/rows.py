"""Ledger rows for tests, and a way to put them in a ledger the way the gateway does (through an outbox)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from margin.ledger import db
from margin.ledger.models import ledger
from margin.ledger.outbox import Outbox


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
    return {**{str(c.name): None for c in ledger.columns if c.name != "id"}, **base, **fields}


async def write_rows(url: str, rows: Iterable[dict[str, Any]], directory: Path | None = None) -> None:
    """Append the rows to an outbox and close it (which ingests them)."""
    outbox = Outbox(url, directory)
    outbox.start()
    for item in rows:
        outbox.append(item)
    await outbox.close()


def read_ledger(url: str, table: sa.Table = ledger) -> list[Any]:
    engine = db.make_sync_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(sa.select(table).order_by(*table.primary_key.columns)))
    finally:
        engine.dispose()
