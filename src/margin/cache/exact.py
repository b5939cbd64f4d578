"""Exact response cache: key = sha256 of the normalized request, scoped per tenant.

Only fields that change the answer are in the key (model, messages, tools, sampling parameters, response
format…); transport fields (`stream`, `stream_options`, `user`, `metadata`, the upstream's prompt-cache and
safety hints, a `prediction`) are not, so a streamed request hits an answer first produced without
streaming and vice versa. Entries hold the answer's text, finish reason (and the stop sequence that ended it,
where the backend named one), usage and what it cost, so a hit can be replayed in either form and its saving
recorded.

Stores: `MemoryCache` (TTL + byte-bounded LRU, this process), `SqliteCache` (that LRU in front of a table in
the SQLite ledger file: survives restarts) and `RedisCache` (shared by replicas)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import orjson

from margin.logs import Every, printable
from margin.types import Usage

log = logging.getLogger("margin.cache")
MAX_PENDING_WRITES = 1024  # SQLite table writes queued for the worker thread, at most (and memory.max_bytes of bytes)
EVICT_STEP = 256  # rows one eviction (or purge) statement deletes, at most: a short write on the ledger's file
CLOSE_S = 5.0  # how long closing waits for the queued table writes (off the event loop); the rest are dropped
# fields that do not change the answer: how it travels, who asked, the upstream's own caching and abuse detection,
# how fast it comes (`prediction`: the answer is the same without it)
TRANSPORT_FIELDS = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "safety_identifier",
        "prediction",
    }
)


@dataclass(frozen=True, slots=True)
class Entry:
    text: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    cost_nanousd: int | None  # what producing it cost (the saving of every hit); None: unknown price
    model: str
    created_at: float
    # the stop sequence that ended the answer, where the backend named it (an anthropic backend's `stop_sequence`):
    # replayed as the choice's `stop_reason`, so a hit ends as the answer did (none in older entries)
    stop_sequence: str | None = None

    @property
    def usage(self) -> Usage:
        return Usage(self.input_tokens, self.output_tokens, source="cache")

    def to_bytes(self) -> bytes:
        """Without a stop sequence, the bytes an entry had before it kept one (an earlier margin reads them)."""
        data = asdict(self)
        if data["stop_sequence"] is None:
            del data["stop_sequence"]
        return orjson.dumps(data)

    @classmethod
    def from_bytes(cls, data: bytes) -> Entry:
        """An entry, leaving out what a later margin added (a shared Redis during an upgrade)."""
        return cls(**{name: value for name, value in orjson.loads(data).items() if name in ENTRY_FIELDS})


ENTRY_FIELDS = frozenset(field.name for field in fields(Entry))


def request_key(scope: str, endpoint: str, model: str, raw: dict[str, Any]) -> str:
    """The cache key of a request: tenant scope, endpoint, resolved model and the answer-changing fields."""
    fields = {k: v for k, v in raw.items() if k not in TRANSPORT_FIELDS and k != "model"}
    canonical = orjson.dumps([scope, endpoint, model, fields], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def deterministic(raw: dict[str, Any]) -> bool:
    """Cached by default only when the caller asked for a reproducible answer."""
    temperature = raw.get("temperature")
    return raw.get("seed") is not None or (isinstance(temperature, int | float) and temperature == 0)


class CacheStore(Protocol):
    async def get(self, key: str) -> Entry | None: ...

    async def put(self, key: str, entry: Entry, ttl_s: float) -> None: ...

    async def close(self) -> None: ...


class MemoryCache:
    """TTL + LRU bounded by the bytes of the stored entries."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes_used(self) -> int:
        return self._bytes

    async def get(self, key: str) -> Entry | None:
        item = self._entries.get(key)
        if item is None:
            return None
        data, expires = item
        if time.monotonic() >= expires:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return Entry.from_bytes(data)

    async def put(self, key: str, entry: Entry, ttl_s: float) -> None:
        data = entry.to_bytes()
        if len(data) > self.max_bytes:
            return
        self._drop(key)
        self._entries[key] = (data, time.monotonic() + ttl_s)
        self._bytes += len(data)
        while self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    def _drop(self, key: str) -> None:
        item = self._entries.pop(key, None)
        if item is not None:
            self._bytes -= len(item[0])

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0


class SqliteCache:
    """The memory LRU in front of a table in the SQLite ledger file, so entries outlive a restart on a single
    node. Reads that miss memory and all writes run on one worker thread (stdlib sqlite3, WAL).

    Both bounded: the table by `max_disk_bytes` of entries (key and value bytes, a running total counted once at
    start on the worker thread): past it the oldest written go, in steps of at most `EVICT_STEP` rows, down to 7/8
    of it; the writes queued for the thread by `MAX_PENDING_WRITES` and `memory.max_bytes` of their bytes: past
    either, a write is dropped (the entry stays in memory; logged at most once a minute), never waited for.
    Oldest written, not least recently read: the order is the table's own rowid (a row replaced gets a new one), so
    a read never becomes a write on the file the ledger's ingest shares, and what is read often is in memory."""

    def __init__(self, path: str, memory: MemoryCache, max_disk_bytes: int = 1024**3) -> None:
        self.memory = memory
        self.max_disk_bytes = max_disk_bytes
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA busy_timeout=5000")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="margin-cache")
        self._puts = 0
        self.disk_bytes = 0  # the table's entries' bytes: read and written on the worker thread only
        self._lock = threading.Lock()  # the queue's counts: the event loop adds, the worker thread takes off
        self.pending = 0
        self.pending_bytes = 0
        self.dropped = 0  # writes not queued: the queue was full
        self._warn = Every(60)
        self.close_timeout_s = CLOSE_S
        self._pool.submit(self._start)

    async def _run(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: self._connection.execute(sql, args).fetchall())

    async def disk_usage(self) -> int:
        """The table's entries' bytes once the writes queued before this call are in."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, lambda: self.disk_bytes)

    async def get(self, key: str) -> Entry | None:
        entry = await self.memory.get(key)
        if entry is not None:
            return entry
        rows = await self._run(
            "SELECT value, expires_at FROM cache_entries WHERE key = ? AND expires_at > ?", (key, time.time())
        )
        if not rows:
            return None
        entry = Entry.from_bytes(rows[0][0])
        await self.memory.put(key, entry, rows[0][1] - time.time())
        return entry

    async def put(self, key: str, entry: Entry, ttl_s: float) -> None:
        """Memory at once; the table write is queued on the worker thread (expired rows purged every 100 puts),
        or dropped when the queue is full or the entry alone is over what eviction leaves (7/8 of the table's bound:
        a larger one would empty the table, itself included)."""
        await self.memory.put(key, entry, ttl_s)
        data = entry.to_bytes()
        size = len(key) + len(data)
        if size > self.max_disk_bytes - self.max_disk_bytes // 8 or not self._queue(size):  # the eviction's target
            return
        self._puts += 1
        purge = self._puts % 100 == 0
        self._pool.submit(self._write, (key, data, time.time() + ttl_s), purge, size)

    def _queue(self, size: int) -> bool:
        with self._lock:
            full = self.pending >= MAX_PENDING_WRITES or self.pending_bytes + size > self.memory.max_bytes
            if self.pending and full:  # an empty queue takes any entry: one larger than memory is still written
                self.dropped += 1
                dropped = self.dropped
            else:
                self.pending += 1
                self.pending_bytes += size
                return True
        if self._warn.due():
            log.warning(
                "the cache's SQLite writes are behind (%d queued, %d bytes): entries stay in memory only "
                "(%d dropped so far)",
                self.pending,
                self.pending_bytes,
                dropped,
            )
        return False

    def _start(self) -> None:
        """The running total, counted once; and a bound lowered since the last run applied."""
        try:
            self.disk_bytes = self._count()
            self._evict()
        except sqlite3.OperationalError as exc:  # an app built on a ledger not migrated yet: no table, nothing held
            if "no such table" not in str(exc):
                log.exception("reading the cache's SQLite table failed")
        except sqlite3.Error:
            log.exception("reading the cache's SQLite table failed")

    def _count(self) -> int:
        sql = "SELECT COALESCE(SUM(length(key) + length(value)), 0) FROM cache_entries"
        return int(self._connection.execute(sql).fetchone()[0])

    def _write(self, row: tuple[str, bytes, float], purge: bool, size: int) -> None:
        try:
            sql = "SELECT length(key) + length(value) FROM cache_entries WHERE key = ?"
            old = self._connection.execute(sql, (row[0],)).fetchone()
            self._connection.execute(
                "INSERT OR REPLACE INTO cache_entries (key, value, expires_at) VALUES (?, ?, ?)", row
            )
            self.disk_bytes += size - (old[0] if old else 0)
            if purge:
                self._delete("expires_at <= ?", (time.time(),))
            self._evict()
        except sqlite3.Error:
            log.exception("writing a cache entry to SQLite failed (it stays in memory)")
        finally:
            with self._lock:
                self.pending -= 1
                self.pending_bytes -= size

    def _evict(self) -> None:
        """Past the bound, the oldest written rows go (by rowid), in steps of at most `EVICT_STEP` rows (each its
        own short write), until the table holds 7/8 of the bound."""
        if self.disk_bytes <= self.max_disk_bytes:
            return
        target = self.max_disk_bytes - self.max_disk_bytes // 8
        while self.disk_bytes > target:
            sql = "SELECT rowid, length(key) + length(value) FROM cache_entries ORDER BY rowid LIMIT ?"
            rows = self._connection.execute(sql, (EVICT_STEP,)).fetchall()
            if not rows:  # the total was off (rows deleted elsewhere): count again
                self.disk_bytes = self._count()
                return
            excess, last = self.disk_bytes - target, rows[-1][0]
            for rowid, size in rows:  # the fewest oldest rows that make up the excess
                excess -= size
                if excess <= 0:
                    last = rowid
                    break
            self._delete("rowid <= ?", (last,))

    def _delete(self, where: str, args: tuple[Any, ...]) -> None:
        """Delete the rows `where` holds, at most `EVICT_STEP` of them, taking their bytes off the total."""
        sql = (
            f"DELETE FROM cache_entries WHERE rowid IN (SELECT rowid FROM cache_entries WHERE {where} LIMIT ?) "
            "RETURNING length(key) + length(value)"
        )
        self.disk_bytes -= sum(size for (size,) in self._connection.execute(sql, (*args, EVICT_STEP)).fetchall())

    async def close(self) -> None:
        """Write what is queued, on the store's thread, waiting at most `close_timeout_s` without blocking the event
        loop (other requests go on while the gateway stops); past it the writes still queued are dropped, counted
        and logged (a cache: those entries are not kept, nothing else is lost), and the write under way ends on
        its own (bounded by the file's busy timeout), the connection closed after it."""
        await self.memory.close()
        loop = asyncio.get_running_loop()
        drained = loop.create_future()
        threading.Thread(target=self._drain, args=(loop, drained), name="margin-cache-close", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(drained), self.close_timeout_s)
        except TimeoutError:
            with self._lock:
                queued = self.pending
            self._pool.shutdown(wait=False, cancel_futures=True)
            log.warning(
                "closing the cache's SQLite table took over %.1f s: up to %d queued writes dropped (those entries "
                "are not kept)",
                self.close_timeout_s,
                queued,
            )

    def _drain(self, loop: asyncio.AbstractEventLoop, drained: asyncio.Future[None]) -> None:
        """The store's thread stopped once its queue is done, then its connection closed; `drained` then set."""
        try:
            self._pool.shutdown(wait=True)
            self._connection.close()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
                loop.call_soon_threadsafe(_resolve, drained)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class RedisCache:
    """Entries in Redis with their TTL; Redis' own maxmemory policy bounds the size (`cache.redis` apart from
    the governance store's Redis, so that its eviction never drops a budget reservation). A Redis that fails
    is a miss, and an answer not stored: the request is served all the same (logged at most once a minute)."""

    def __init__(self, url: str) -> None:
        from redis import asyncio as aioredis

        self._redis: Any = aioredis.from_url(url)
        self._warn = Every(60)
        # the last read answered: the lease of a miss (`margin.cache.flight`) is not asked of a Redis that just failed
        self.reachable = True

    @property
    def client(self) -> Any:
        """The Redis client (the semantic cache shares its additions through the same Redis)."""
        return self._redis

    @staticmethod
    def entry_key(key: str) -> str:
        return f"mgn:x:{key}"

    @staticmethod
    def seconds(ttl_s: float) -> int:
        """An entry's TTL as Redis' EX takes it (whole seconds, at least 1)."""
        return max(1, int(ttl_s))

    def failed(self, operation: str, exc: Exception) -> None:
        if self._warn.due():
            log.warning("cache %s in Redis failed (%s); serving without the cache", operation, printable(str(exc)))

    async def get(self, key: str) -> Entry | None:
        from redis.exceptions import RedisError

        try:
            data = await self._redis.get(self.entry_key(key))
        except RedisError as exc:
            self.reachable = False
            self.failed("read", exc)
            return None
        self.reachable = True
        return None if data is None else Entry.from_bytes(data)

    async def put(self, key: str, entry: Entry, ttl_s: float) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.set(self.entry_key(key), entry.to_bytes(), ex=self.seconds(ttl_s))
        except RedisError as exc:  # e.g. OOM: over maxmemory with nothing left to evict
            self.failed("write", exc)

    async def close(self) -> None:
        await self._redis.aclose()
