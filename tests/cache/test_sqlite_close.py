"""Closing the exact cache's SQLite store (gateway shutdown) writes what is queued on the store's thread without
blocking the event loop, for at most `close_timeout_s`. Before, `close` called the thread pool's
`shutdown(wait=True)` on the loop: every other request's (and the shutdown's own) work stopped until the queued
writes were in, as long as the ledger's file was locked (5 s a write). Past the bound the writes still queued are
dropped and logged: a cache loses entries, never the gateway its loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from margin.cache.exact import MemoryCache, SqliteCache
from tests.cache.test_sqlite_bound import entry, key, ledger, table

RELEASE_S = 20.0  # the held thread is let go after this at the latest (the old code's close then returned)


@pytest.fixture
def held() -> Iterator[threading.Event]:
    event = threading.Event()
    timer = threading.Timer(RELEASE_S, event.set)
    timer.start()
    yield event
    event.set()
    timer.cancel()


async def _queued(store: SqliteCache, held: threading.Event, count: int) -> None:
    """`count` table writes queued behind a held store thread (a locked ledger file)."""
    await store.get(key(10_000))  # the store has started (its thread counted the table)
    store._pool.submit(held.wait, RELEASE_S)
    for index in range(count):
        await store.put(key(index), entry(index), 3600)


async def test_closing_writes_the_queue_without_blocking_the_loop(tmp_path: Path, held: threading.Event) -> None:
    path = ledger(tmp_path)
    store = SqliteCache(path, MemoryCache(1024 * 1024))
    store.close_timeout_s = 60.0
    await _queued(store, held, 10)
    closing = asyncio.create_task(store.close())
    ticks = 0
    for _ in range(5):  # the loop runs other work while the close waits for the thread
        await asyncio.sleep(0.01)
        ticks += 1
    assert not closing.done()  # before: the close held the loop until the thread was let go, and was done
    held.set()
    await closing
    assert ticks == 5
    assert [k for k, _ in table(path)] == [key(i) for i in range(10)]  # what was queued is written


async def test_closing_is_bounded_and_drops_what_is_still_queued(
    tmp_path: Path, held: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    path = ledger(tmp_path)
    store = SqliteCache(path, MemoryCache(1024 * 1024))
    store.close_timeout_s = 0.2
    await _queued(store, held, 10)
    caplog.set_level(logging.WARNING, logger="margin.cache")
    await store.close()
    assert not held.is_set()  # before: the close returned only once the thread was let go (RELEASE_S)
    warnings = [r.getMessage() for r in caplog.records if "queued writes dropped" in r.getMessage()]
    assert len(warnings) == 1 and "up to 10 queued" in warnings[0]
    held.set()
    for thread in list(store._pool._threads):
        thread.join(RELEASE_S)
    assert table(path) == []  # the queued writes were dropped, not written after the close returned
