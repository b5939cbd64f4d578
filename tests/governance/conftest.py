"""Governance helpers: keys on a fresh ledger and their bearer header (services: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from margin import keys
from margin.ledger import db


def make_key(db_path: Path, **spec: object) -> tuple[str, str]:
    url = f"sqlite:///{db_path}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    try:
        record, key = keys.create_key(engine, keys.NewKey(**spec))  # type: ignore[arg-type]
    finally:
        engine.dispose()
    return record.id, key


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}
