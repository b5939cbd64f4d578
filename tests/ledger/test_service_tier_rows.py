"""The `service_tier` a request was charged at goes from the row the gateway writes through the outbox (JSON
lines, staged by SQL: SQLite's `json_extract`, PostgreSQL's `json_to_recordset`) into the ledger (0018)."""

from __future__ import annotations

from pathlib import Path

from margin.ledger import db
from tests.ledger.rows import read_ledger, row, write_rows


async def check(url: str, directory: Path) -> None:
    db.upgrade(url)
    rows = [row("flex", service_tier="flex"), row("priority", service_tier="priority"), row("none")]
    await write_rows(url, rows, directory)
    assert {r.request_id: r.service_tier for r in read_ledger(url)} == {
        "flex": "flex",
        "priority": "priority",
        "none": None,
    }


async def test_the_tier_reaches_the_ledger_on_sqlite(tmp_path: Path) -> None:
    await check(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "outbox")


async def test_the_tier_reaches_the_ledger_on_postgres(fresh_postgres: str, tmp_path: Path) -> None:
    await check(fresh_postgres, tmp_path / "outbox")
