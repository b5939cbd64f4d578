"""margin.keywatch in one process: a revocation another process wrote is found in the audit log by the governance
pass and the cached lookups are forgotten; a Redis that cannot be reached costs a line in the log, never an error
or a traceback per retry, and the key cache's TTL still bounds a revoked key."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from margin import keys
from margin.governance.redis_store import RedisStore
from margin.governance.store import LocalStore
from margin.keycache import KeyCache
from margin.keyops import rotate_key
from margin.keywatch import KeyWatch, announce
from margin.ledger import audit, db

CLI = audit.Origin("cli:test", "cli")


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[tuple[Any, Any]]:
    """(sync engine, async engine) of a fresh SQLite ledger."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    db.upgrade(url)
    sync, engine = db.make_sync_engine(url), db.make_async_engine(url)
    yield sync, engine
    await engine.dispose()
    sync.dispose()


def _key(sync: Any, name: str) -> tuple[str, str]:
    record, key = keys.create_key(sync, keys.NewKey(name), CLI)
    return record.id, key


async def test_the_audit_log_says_when_a_key_was_revoked_or_rotated(ledger: tuple[Any, Any]) -> None:
    sync, _ = ledger
    first, _ = _key(sync, "a")
    second, _ = _key(sync, "b")
    with sync.connect() as connection:
        last, changed = audit.key_changes(connection, 0)
    assert (last, changed) == (2, False)  # created keys are no news for a cache
    audit.write(sync, CLI, audit.Change("key.revoke", first, outcome="denied"))
    keys.revoke_key(sync, first, CLI)
    with sync.connect() as connection:
        assert audit.key_changes(connection, 2) == (4, True)
        assert audit.key_changes(connection, 3) == (4, True)
        assert audit.key_changes(connection, 4) == (4, False)  # nothing since
        assert audit.key_changes(connection, 100) == (4, True)  # a log pruned empty and numbered again
    rotate_key(sync, second, timedelta(0), CLI)
    with sync.connect() as connection:
        assert audit.key_changes(connection, 4) == (5, True)


async def test_the_pass_forgets_a_key_another_process_revoked(ledger: tuple[Any, Any]) -> None:
    sync, engine = ledger
    key_id, key = _key(sync, "svc")
    cache = KeyCache(engine, ttl_s=60)
    watch = KeyWatch(cache, LocalStore(), engine)
    await watch.start()
    assert (await cache.lookup(key)) is not None
    keys.revoke_key(sync, key_id, CLI)  # the CLI, or another replica
    assert (await cache.lookup(key)) is not None  # cached: 60 s
    queries = cache.queries
    await watch.follow()
    assert await cache.lookup(key) is None
    assert cache.queries == queries + 1
    await watch.follow()  # nothing new: the cache is left alone
    assert await cache.lookup(key) is None and cache.queries == queries + 1


async def test_a_redis_that_cannot_be_reached_is_one_line_in_the_log(
    ledger: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    sync, engine = ledger
    key_id, key = _key(sync, "svc")
    cache = KeyCache(engine, ttl_s=60)
    store = RedisStore("redis://127.0.0.1:1/0")  # nothing listens there
    watch = KeyWatch(cache, store, engine)
    assert await cache.lookup(key) is not None
    keys.revoke_key(sync, key_id, CLI)
    caplog.set_level(logging.INFO)
    await watch.changed()  # a revocation through this process: no error, forgotten here
    assert await cache.lookup(key) is None
    listener = asyncio.get_running_loop().create_task(watch._listen(store))
    await asyncio.sleep(2.5)  # three tries
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    await store.close()
    unheard = [r for r in caplog.records if "not heard" in r.getMessage()]
    assert len(unheard) == 1 and unheard[0].exc_info is None
    assert not any(r.exc_info for r in caplog.records)
    assert await announce("redis://127.0.0.1:1/0", timeout_s=2) is False
