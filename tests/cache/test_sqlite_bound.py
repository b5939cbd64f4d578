"""The exact cache's SQLite table and its write queue are bounded. Before, only expired rows were purged, and
`ttl_s` may be 366 days: distinct cacheable requests grew the ledger file without bound; and each table write
was queued on the store's one thread with no bound, so a slow or locked file let queued writes (and their
answers' bytes) pile up in memory. Now the table holds at most `max_disk_bytes` of entries (the oldest written go
first, down to 7/8 of it; a running total counted once at start), and at most `MAX_PENDING_WRITES` writes and
`max_bytes` of their bytes wait for the thread: past that a write is dropped, logged at most once a minute."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from margin.cache.exact import Entry, MemoryCache, SqliteCache
from margin.ledger.models import cache_entries
from tests.helpers import rss_kb

MAX_PENDING_WRITES = 1024  # margin.cache.exact's bound, restated: the test reads the old code's queue with it


def ledger(tmp_path: Path) -> str:
    path = tmp_path / "ledger.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    cache_entries.create(engine)
    engine.dispose()
    return str(path)


def entry(index: int, size: int = 200) -> Entry:
    return Entry(f"answer {index} " + "x" * size, "stop", 3, 1, 1000, "m", 1_700_000_000.0)


def key(index: int) -> str:
    return f"{index:064x}"


def table(path: str) -> list[tuple[str, int]]:
    """(key, key and value bytes) of each row, oldest written first."""
    with sqlite3.connect(path) as connection:
        sql = "SELECT key, length(key) + length(value) FROM cache_entries ORDER BY rowid"
        return [(str(k), int(n)) for k, n in connection.execute(sql).fetchall()]


async def test_the_table_stays_under_its_bound_and_the_oldest_written_go_first(tmp_path: Path) -> None:
    path = ledger(tmp_path)
    bound = 20_000
    store = SqliteCache(path, MemoryCache(1024 * 1024), max_disk_bytes=bound)
    sizes = []
    for index in range(500):  # about 145 kB of entries: 7 times the bound
        await store.put(key(index), entry(index), 3600)
        sizes.append(len(key(index)) + len(entry(index).to_bytes()))
        if index % 50 == 49:
            assert await store.disk_usage() <= bound
    assert await store.get(key(0)) is not None  # in memory still: the bound is the table's
    usage = await store.disk_usage()
    await store.close()
    rows = table(path)
    assert sum(n for _, n in rows) == usage <= bound
    assert sum(sizes) > 7 * bound
    kept = len(rows)
    assert [k for k, _ in rows] == [key(i) for i in range(500 - kept, 500)]  # the newest, oldest first
    assert usage > bound // 2  # evicted in steps to 7/8 of the bound, not emptied
    reopened = SqliteCache(path, MemoryCache(1024 * 1024), max_disk_bytes=bound)
    assert await reopened.get(key(499)) == entry(499)  # from the table: a new process' memory is empty
    assert await reopened.get(key(0)) is None
    await reopened.close()


async def test_a_read_does_not_keep_an_entry_written_early(tmp_path: Path) -> None:
    """Oldest written, not least recently read: a read is not a write on the ledger's file."""
    path = ledger(tmp_path)
    store = SqliteCache(path, MemoryCache(1024 * 1024), max_disk_bytes=4096)
    for index in range(10):
        await store.put(key(index), entry(index), 3600)
    await store.disk_usage()
    assert key(0) in dict(table(path))
    store.memory = MemoryCache(1024 * 1024)  # what a restart leaves: the read goes to the table
    assert await store.get(key(0)) == entry(0)
    for index in range(10, 20):
        await store.put(key(index), entry(index), 3600)
    await store.close()
    assert key(0) not in dict(table(path)) and key(19) in dict(table(path))


async def test_a_replaced_entry_is_counted_once_and_a_restart_reads_the_total(tmp_path: Path) -> None:
    path = ledger(tmp_path)
    store = SqliteCache(path, MemoryCache(1024 * 1024), max_disk_bytes=1024 * 1024)
    for index in range(40):
        await store.put(key(index % 10), entry(index, size=100 + index), 3600)  # each key written 4 times
    usage = await store.disk_usage()
    await store.close()
    assert usage == sum(n for _, n in table(path)) and len(table(path)) == 10
    again = SqliteCache(path, MemoryCache(1024 * 1024), max_disk_bytes=1024 * 1024)
    assert await again.disk_usage() == usage  # counted once at start
    await again.put(key(99), entry(99), 3600)
    assert await again.disk_usage() == usage + len(key(99)) + len(entry(99).to_bytes())
    await again.close()
    lowered = SqliteCache(path, MemoryCache(1024 * 1024), max_disk_bytes=2048)  # a bound lowered since
    usage = await lowered.disk_usage()
    await lowered.close()
    assert usage == sum(n for _, n in table(path)) <= 2048 - 2048 // 8
    assert table(path)[-1][0] == key(99)


async def test_a_blocked_writer_drops_writes_past_the_bound_and_memory_stays_bounded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store's thread held (a locked file: each write waits up to 5 s): 5,000 puts of 10 kB answers. Before,
    all 5,000 writes queued, 50 MB held for the thread; now at most 1,024 of them and `max_bytes` of bytes."""
    path = ledger(tmp_path)
    max_bytes = 1024 * 1024
    store = SqliteCache(path, MemoryCache(max_bytes))
    await store.get(key(0))  # the store has started (its thread counted the table)
    held = threading.Event()
    store._pool.submit(held.wait, 60)
    caplog.set_level(logging.WARNING, logger="margin.cache")
    try:
        before = rss_kb(os.getpid())
        for index in range(5000):
            await store.put(key(index), entry(index, size=10_000), 3600)
        grown = rss_kb(os.getpid()) - before
    finally:
        queued = store._pool._work_queue.qsize()
        held.set()
    assert queued <= MAX_PENDING_WRITES  # before: 5,000
    assert grown < 16 * 1024  # kB: the memory LRU and the queue, each at most max_bytes; before: over 50 MB
    assert await store.get(key(4999)) == entry(4999, size=10_000)  # dropped from the queue, not from memory
    await store.close()
    rows = table(path)
    assert 0 < len(rows) == queued < 5000
    assert [k for k, _ in rows] == [key(i) for i in range(len(rows))]  # the first ones queued were written
    warnings = [r for r in caplog.records if "SQLite writes are behind" in r.getMessage()]
    assert len(warnings) == 1  # once a minute, not once per dropped write


async def test_an_entry_past_what_eviction_leaves_does_not_empty_the_table(tmp_path: Path) -> None:
    """An entry between 7/8 of the bound (what eviction brings the table down to) and the bound was written, and the
    eviction after it deleted every row, itself included; it now stays in memory only, and the table as it was."""
    path = ledger(tmp_path)
    store = SqliteCache(path, MemoryCache(1024 * 1024), max_disk_bytes=4096)
    for index in range(3):
        await store.put(key(index), entry(index), 3600)
    large = entry(99, size=3_700)  # with its key ~3,900 bytes: under the bound, over 7/8 of it (3,584)
    await store.put(key(99), large, 3600)
    await store.disk_usage()
    assert await store.get(key(99)) == large  # from memory
    await store.close()
    assert [k for k, _ in table(path)] == [key(i) for i in range(3)]  # before: empty


async def test_the_count_at_start_on_a_ledger_not_migrated_yet_is_quiet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An app built on a ledger file whose tables are not made yet (the store counts at start, on its thread):
    nothing held, and no traceback in the log (the table's absence is not a failure); another error still is."""
    caplog.set_level(logging.DEBUG, logger="margin.cache")
    store = SqliteCache(str(tmp_path / "empty.db"), MemoryCache(1024 * 1024))
    assert await store.disk_usage() == 0
    await store.close()
    assert [r for r in caplog.records if r.name == "margin.cache"] == []
    broken = str(tmp_path / "broken.db")
    with sqlite3.connect(broken) as connection:  # a table not as margin makes it: "no such column"
        connection.execute("CREATE TABLE cache_entries (key TEXT)")
    store = SqliteCache(broken, MemoryCache(1024 * 1024))
    await store.disk_usage()
    await store.close()
    assert any(r.exc_info for r in caplog.records if "reading the cache's SQLite table failed" in r.getMessage())
