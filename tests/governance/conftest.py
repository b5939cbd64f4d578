"""Governance helpers: keys on a fresh ledger and their bearer header, both counter stores (services:
tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis import asyncio as aioredis

from margin import keys
from margin.governance.redis_store import RedisStore
from margin.governance.store import LocalStore, Store
from margin.ledger import db
from tests.helpers import margin_serve


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Any]:
    """An async engine on a migrated SQLite ledger at `l.db` in the test's folder (the file a test's gateway or
    `fake_settings(tmp_path / "l.db")` names)."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    db.upgrade(url)
    made = db.make_async_engine(url)
    yield made
    await made.dispose()


@pytest.fixture(params=["local", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """The counter store in this process, then over the session's real Redis (emptied first)."""
    if request.param == "local":
        yield LocalStore()
        return
    url = request.getfixturevalue("redis_url")
    client = aioredis.from_url(url)
    await client.flushdb()
    await client.aclose()
    redis_store = RedisStore(url)
    yield redis_store
    await redis_store.close()


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


@contextmanager
def served_with_admin(workdir: Path, config: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, str]]]:
    """`margin serve` of `config` in a subprocess on a fresh SQLite ledger holding one admin key: (gateway URL,
    database URL, the admin key's auth header)."""
    url = f"sqlite:///{workdir / 'ledger.db'}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    try:
        _, admin = keys.create_key(engine, keys.NewKey("root", is_admin=True))
    finally:
        engine.dispose()
    path = workdir / "margin.yaml"
    path.write_text(yaml.safe_dump({**config, "storage": {"ledger": url}}))
    with margin_serve(None, workdir / "serve.log", path) as (base, _):
        yield base, url, bearer(admin)
