"""Per-key caps on things in flight, held from when one starts until it ends, however it ends: the streams
of a key (`admission.max_streams_per_key`, margin.pipeline.steps.admit) and the running places of its file
uploads and downloads (margin.gates.KeyedGate, `Services.uploads`/`downloads`), and as many places again for
its streams that only wait for an identical request's answer. Each kind is a `pool`: its
own count per key, under its own Redis key.

One process with in-process counters: `LocalSlots` (the stream cap; the file gates count in process
themselves). With Redis (`storage.redis`, or `--workers N`, whose supervisor runs an embedded one):
`SharedSlots`, a lease per holder in one sorted set per pool and key, so every worker and replica counts the
same ones. A lease expires `LEASE_S` after it was taken or last renewed (Redis' clock); its holder renews its
open leases every `RENEW_S`, so a process killed while it holds some frees them within `LEASE_S` instead of
holding them for good."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from margin import tasks
from margin.errors import MarginError

log = logging.getLogger("margin.governance")

LEASE_S = 30.0
RENEW_S = 10.0

# the pools: each its own count per key (the Redis key `mgn:{pool}:{api key}`)
STREAMS = "st"
WAITING_STREAMS = "sw"  # a key's streams that only wait for an identical request's answer (margin.pipeline.steps.cache)
UPLOADS = "up"
DOWNLOADS = "dl"


class Slots(Protocol):
    cap: int | None

    async def acquire(self, key: str, lease: str) -> bool:
        """Take a slot of `key` for `lease` (a stream's request id, an upload's own id); False when all are
        taken. A store that cannot answer raises (margin.errors.Overloaded): refused, never unbounded."""
        ...

    def release(self, key: str, lease: str) -> None:
        """Give the slot back (never raises, never waits: it may run while the request is cancelled)."""
        ...

    def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class LocalSlots:
    """Open streams per API key in this process."""

    cap: int | None
    _open: dict[str, int] = field(default_factory=dict)

    async def acquire(self, key: str, lease: str) -> bool:
        held = self._open.get(key, 0)
        if self.cap is not None and held >= self.cap:
            return False
        self._open[key] = held + 1
        return True

    def release(self, key: str, lease: str) -> None:
        held = self._open.get(key, 0) - 1
        if held > 0:
            self._open[key] = held
        else:
            self._open.pop(key, None)

    def held(self, key: str) -> int:
        return self._open.get(key, 0)

    def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


@runtime_checkable
class SlotStore(Protocol):
    """The Redis side (margin.governance.redis_store.RedisStore); `pool`: which count (STREAMS, UPLOADS…)."""

    async def take_slot(self, key: str, lease: str, cap: int, lease_s: float, pool: str = STREAMS) -> bool: ...

    async def free_slot(self, key: str, lease: str, pool: str = STREAMS) -> None: ...

    async def renew_slots(self, leases: Sequence[tuple[str, str]], lease_s: float, pool: str = STREAMS) -> list[int]:
        """Extend these leases; the indexes of those the store no longer had (it restarted, or one expired)."""
        ...

    async def restore_slots(self, leases: Sequence[tuple[str, str]], lease_s: float, pool: str = STREAMS) -> None:
        """Add these leases back (holders still open whose leases the store lost), whatever the cap."""
        ...


class SharedSlots:
    """What one pool holds per API key across every process that shares the Redis."""

    def __init__(self, cap: int | None, store: SlotStore, pool: str = STREAMS, what: str = "stream") -> None:
        self.cap, self.pool, self.what = cap, pool, what
        self._store = store
        self._held: dict[str, str] = {}  # lease → key, what this process holds (renewed)
        self._tasks: set[asyncio.Task[None]] = set()
        self._renewing: asyncio.Task[None] | None = None

    async def acquire(self, key: str, lease: str) -> bool:
        if self.cap is None:
            return True
        try:
            taken = await self._store.take_slot(key, lease, self.cap, LEASE_S, self.pool)
        except asyncio.CancelledError:  # Redis may have taken it before the reply: freed, not held until expiry
            self._held[lease] = key
            self.release(key, lease)
            raise
        if taken:
            self._held[lease] = key
        return taken

    def release(self, key: str, lease: str) -> None:
        if self._held.pop(lease, None) is None:
            return
        task = asyncio.get_running_loop().create_task(self._free(key, lease))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _free(self, key: str, lease: str) -> None:
        try:
            await self._store.free_slot(key, lease, self.pool)
        except MarginError:  # Redis is down: the lease expires on its own within LEASE_S
            log.warning("could not free %s slot %s of key %s; it expires in %.0f s", self.what, lease, key, LEASE_S)

    def start(self) -> None:
        if self.cap is not None:
            self._renewing = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            try:
                await self.renew()
            except MarginError:
                log.warning("could not renew %d %s slots; retrying in %.0f s", len(self._held), self.what, RENEW_S)

    async def renew(self) -> None:
        """Extend this process's open leases. Those the store lost (a Redis restarted without its data) are
        added back while their holders are still open: before, they were not, and the key could open its cap's
        worth of streams again on top of those. One that ends meanwhile may leave its lease to expire within
        `LEASE_S` (a slot held a little long, never one too many)."""
        held = [(key, lease) for lease, key in self._held.items()]
        if not held:
            return
        lost = [held[index] for index in await self._store.renew_slots(held, LEASE_S, self.pool)]
        still = [(key, lease) for key, lease in lost if lease in self._held]
        if still:
            log.warning("%d %s slots were lost by the store (a restart?); added back", len(still), self.what)
            await self._store.restore_slots(still, LEASE_S, self.pool)

    async def close(self) -> None:
        await tasks.stop(self._renewing)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
