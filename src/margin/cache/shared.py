"""The semantic cache's additions shared through Redis, so that every process on one Redis (the workers of
`margin serve --workers N`, replicas) answers from what any of them stored.

Lookups stay in each process's own vector index (no network on a lookup). An addition is also appended to
one Redis stream, capped with `MAXLEN ~` (the oldest go first): the entry's tenant, bucket scope, context
hash, exact-cache key (the answer itself stays in the exact cache, in the same Redis), identifiers, wall-clock
expiry and float32 vector. Each process tails the stream (bounded blocking reads, one task) and adds what the
others stored to its own index; one that starts later back-fills from what the stream still holds.

Bounded everywhere: the stream's length, each record's size (checked on the way in and on the way out: a
record that fails a check is skipped), each read's count, and the queue of additions not yet written (full:
the addition stays local). Redis failing is never a stall: writes leave the request path through that queue,
reads are retried with a growing pause, and a lookup never waits on Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from margin.cache.identifiers import Identifiers
from margin.logs import Every, printable

log = logging.getLogger("margin.cache")
Vector = npt.NDArray[np.float32]
STREAM = "mgn:s:log"
ENTRY_BYTES = 2048  # about what one record of a 384-dimension vector takes in Redis (the stream's bound)
MAX_META_BYTES = 16 * 1024  # a record's metadata (scope, words of the question…): a larger one is not shared
MAX_TEXT = 2048  # tenant, scope: characters
MAX_WORDS = 1000  # the layer looks up questions of at most 1,000 characters
READ_COUNT = 256
BLOCK_MS = 1000
QUEUE = 1024
WRITE_BATCH = 64
TIMEOUT_S = 5.0
FLUSH_S = 1.0
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Shared:
    """One semantic entry as it travels between processes."""

    tenant: str | None
    scope: str
    context: str
    key: str
    identifiers: Identifiers | None
    expires_at: float  # time.time()
    vector: Vector


def encode(origin: str, entry: Shared) -> dict[str, bytes] | None:
    """The stream fields of `entry`, or None when it is too large to share."""
    ids = entry.identifiers
    meta = {
        "t": entry.tenant,
        "s": entry.scope,
        "c": entry.context,
        "k": entry.key,
        "e": entry.expires_at,
        "w": None if ids is None else list(ids.words),
        "i": None if ids is None else sorted(ids.marked),
    }
    data = orjson.dumps(meta)
    if len(data) > MAX_META_BYTES:
        return None
    return {"o": origin.encode(), "m": data, "v": np.asarray(entry.vector, dtype="<f4").tobytes()}


def _text(value: Any, optional: bool = False) -> bool:
    return (optional and value is None) or (isinstance(value, str) and 0 < len(value) <= MAX_TEXT)


def _identifiers(words: Any, marked: Any) -> Identifiers | None:
    if words is None and marked is None:
        return None
    if not isinstance(words, list) or not isinstance(marked, list) or len(words) > MAX_WORDS:
        raise ValueError("identifiers")
    if not all(isinstance(w, str) and len(w) <= MAX_TEXT for w in words) or not set(marked) <= set(words):
        raise ValueError("identifiers")
    return Identifiers(tuple(words), frozenset(marked))


def decode(fields: dict[bytes, bytes], dim: int) -> Shared:
    """The entry of a stream record; ValueError when any part of it is not what `encode` writes."""
    meta_bytes, vector_bytes = fields.get(b"m"), fields.get(b"v")
    if not isinstance(meta_bytes, bytes) or len(meta_bytes) > MAX_META_BYTES:
        raise ValueError("metadata")
    if not isinstance(vector_bytes, bytes) or len(vector_bytes) != dim * 4:
        raise ValueError("vector size")
    meta = orjson.loads(meta_bytes)
    if not isinstance(meta, dict):
        raise ValueError("metadata")
    tenant, scope, context, key, expires = (meta.get(name) for name in ("t", "s", "c", "k", "e"))
    if not (_text(tenant, optional=True) and _text(scope)):
        raise ValueError("names")
    if not (isinstance(scope, str) and isinstance(context, str) and isinstance(key, str)):
        raise ValueError("names")
    if not (_HEX64.fullmatch(context) and _HEX64.fullmatch(key)):
        raise ValueError("hashes")
    if not isinstance(expires, int | float) or not math.isfinite(expires):
        raise ValueError("expiry")
    vector = np.frombuffer(vector_bytes, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(vector)) or not np.any(vector):
        raise ValueError("vector values")
    identifiers = _identifiers(meta.get("w"), meta.get("i"))
    return Shared(tenant, scope, context, key, identifiers, float(expires), vector)


def _records(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The (id, fields) of an XREAD reply (RESP2: [[name, records]]; RESP3: {name: [records]})."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (item[1] for item in reply)
    return [(record_id, fields) for records in streams for record_id, fields in records]


class SemanticFeed:
    """Writes this process's additions to the stream and hands the others' to `apply` (see the module)."""

    def __init__(self, redis: Any, *, dim: int, maxlen: int, stream: str = STREAM) -> None:
        self._redis = redis
        self.dim = dim
        self.maxlen = maxlen
        self.stream = stream
        self.origin = secrets.token_hex(8)
        self._queue: asyncio.Queue[dict[str, bytes]] = asyncio.Queue(QUEUE)
        self._tasks: list[asyncio.Task[None]] = []
        self.caught_up = asyncio.Event()  # the back-fill is read (or Redis failed: nothing to wait for)
        self._warn = Every(60)
        self.dropped = 0  # additions not shared: queue full, too large or Redis failing
        self.skipped = 0  # records read that failed a check
        self.received = 0  # records of other processes added

    def _failed(self, what: str, exc: BaseException) -> None:
        if self._warn.due():
            log.warning("semantic cache: %s failed (%s); lookups go on locally", what, printable(repr(exc)))

    def counts(self) -> dict[str, int]:
        """What the metrics read (`margin_semantic_cache_shared_total{outcome}`)."""
        return {"received": self.received, "dropped": self.dropped, "skipped": self.skipped}

    def publish(self, entry: Shared) -> None:
        """Queue `entry` for the stream; never waits (a full queue drops it: it stays in this process)."""
        fields = encode(self.origin, entry)
        if fields is None:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait(fields)
        except asyncio.QueueFull:
            self.dropped += 1

    def start(self, apply: Callable[[list[Shared]], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._write()), loop.create_task(self._tail(apply))]

    async def ready(self, timeout_s: float) -> None:
        """Wait until the back-fill is in (at most `timeout_s`: a slow Redis delays no start for longer)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.caught_up.wait(), timeout_s)

    async def close(self) -> None:
        """Stop, once the additions queued are written (at most `FLUSH_S`: a hung Redis delays no shutdown more)."""
        if self._tasks and not self._tasks[0].done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), FLUSH_S)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    async def _write(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < WRITE_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await asyncio.wait_for(self._append(batch), TIMEOUT_S)
            except Exception as exc:  # Redis down, OOM, a timeout: not shared, still local
                self.dropped += len(batch)
                self._failed("sharing an entry through Redis", exc)
            for _ in batch:
                self._queue.task_done()

    async def _append(self, batch: list[dict[str, bytes]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for fields in batch:
                pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)
            await pipe.execute()

    async def _tail(self, apply: Callable[[list[Shared]], Awaitable[None]]) -> None:
        last: bytes | str = "0-0"  # from the start: what the stream holds is the back-fill
        pause = 0.5
        while True:
            block = BLOCK_MS if self.caught_up.is_set() else None  # the back-fill's reads answer at once
            try:
                reply = await asyncio.wait_for(
                    self._redis.xread({self.stream: last}, count=READ_COUNT, block=block),
                    BLOCK_MS / 1000 + TIMEOUT_S,
                )
            except Exception as exc:  # retried after a pause; lookups go on locally
                self.caught_up.set()
                self._failed("reading the shared entries from Redis", exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)
                continue
            pause = 0.5
            records = _records(reply)
            if records:
                last = records[-1][0]
                batch = self._decoded(records)
                if batch:
                    try:
                        await apply(batch)
                        self.received += len(batch)
                    except Exception:  # a bug, not Redis: those entries stay unshared, the tail goes on
                        log.exception("semantic cache: adding %d shared entries failed", len(batch))
            if len(records) < READ_COUNT:
                self.caught_up.set()

    def _decoded(self, records: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Shared]:
        batch: list[Shared] = []
        for _, fields in records:
            if fields.get(b"o") == self.origin.encode():
                continue
            try:
                batch.append(decode(fields, self.dim))
            except (ValueError, TypeError, orjson.JSONDecodeError):
                self.skipped += 1
        return batch
