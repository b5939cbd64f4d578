"""Single flight across processes for the exact cache in Redis: identical cacheable requests that miss at the
same moment on several replicas (or workers, or in one process) are answered by one upstream call.

The first to miss takes a lease on the cache key (`SET mgn:l:<key> <token> NX PX <ttl>`, the TTL the request's
own time limit, at most `cache.coalesce_wait_s`; one EVAL, which also reads what is left of a lease another
holds), calls upstream, then stores the answer and releases the lease in one EVAL (a release checks the token,
so a lease that expired and was taken again is never dropped by its first owner). A request that misses while
another holds the lease waits for the entry to appear: it reads the lease's remaining time and the entry
together, growing its pause from 10 ms to 100 ms, for at most what was left of the lease when it began; the
entry there, it is answered as any exact hit. The lease gone with no entry (the owner failed, or its answer is
not one the cache stores), the time up, or Redis failing: it goes upstream itself, as it would have without
the lease. Nothing here fails a request.

`LocalFlights` is the same lease in one process, for the exact cache in memory or SQLite: a dict of the keys
being called upstream, each with its owner's token, the end of its lease and a future its waiters await (no
polling); the owner's end stores the entry and resolves the future with it (or with None: the waiters go
upstream). Bounded: at most `max_flights` keys in flight and `max_waiters` waiters on one (`cache.coalesce_max_keys`,
`cache.coalesce_max_waiters`); a miss past either bound goes upstream as it did before there was a lease."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from dataclasses import dataclass, field
from typing import Protocol

from margin.cache.exact import CacheStore, Entry, RedisCache

# one command each (a pipeline of two costs the client more than an EVAL): the lease taken (-3) or what is left
# of another's (ms; -2: gone meanwhile); the answer stored, when there is one, and the lease deleted only while it
# still holds this owner's token (also when the answer could not be stored: a Redis over its maxmemory with
# nothing to evict refuses the SET, not the DEL)
CLAIM = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return -3 end
return redis.call('pttl', KEYS[1])
"""
LAND = """
local stored = 'OK'
if ARGV[2] ~= '' then stored = redis.pcall('set', KEYS[2], ARGV[2], 'EX', ARGV[3]) end
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
if type(stored) == 'table' and stored.err then return stored.err end
return 'OK'
"""
TAKEN = -3
FIRST_PAUSE_S = 0.01
MAX_PAUSE_S = 0.1


def lease_key(key: str) -> str:
    return f"mgn:l:{key}"


@dataclass(frozen=True, slots=True)
class Lease:
    """The lease of one cache key: ours (`token`: this request calls upstream) or another's (`wait_s`: how long
    this request may wait for that answer)."""

    key: str
    token: str | None = None
    wait_s: float = 0.0
    waits_on: str | None = None  # in this process: the token of the flight a waiter was counted in


class Flight(Protocol):
    """What the cache step asks of a single flight, in Redis (`Flights`) or in this process (`LocalFlights`)."""

    async def claim(self, key: str, limit_s: float | None) -> Lease | None: ...

    async def wait(self, lease: Lease) -> Entry | None: ...

    def leave(self, lease: Lease) -> None:
        """Another's lease this request will not wait on after all (refused first): counted as a waiter no more."""
        ...

    async def land(self, lease: Lease, entry: Entry | None, ttl_s: float) -> None: ...


def lease_s(wait_cap_s: float, limit_s: float | None) -> float:
    """A lease lasts the request's own time limit, at most `cache.coalesce_wait_s`."""
    return wait_cap_s if limit_s is None else min(limit_s, wait_cap_s)


class Flights:
    def __init__(self, store: RedisCache, wait_cap_s: float) -> None:
        self.store = store
        self.wait_cap_s = wait_cap_s

    async def claim(self, key: str, limit_s: float | None) -> Lease | None:
        """The lease of a miss, taken or found held (one round trip); None when Redis failed (or failed the read
        just before): the request goes on as if there were no lease."""
        from redis.exceptions import RedisError

        if not self.store.reachable:
            return None
        ttl_s = lease_s(self.wait_cap_s, limit_s)
        token = secrets.token_hex(16)
        try:
            left_ms = await self.store.client.eval(CLAIM, 1, lease_key(key), token, max(1, int(ttl_s * 1000)))
        except RedisError as exc:
            self.store.failed("lease", exc)
            return None
        if left_ms == TAKEN:
            return Lease(key, token=token)
        return Lease(key, wait_s=min(max(left_ms, 0) / 1000, self.wait_cap_s))

    async def wait(self, lease: Lease) -> Entry | None:
        """The entry another's call stores, or None once its lease is gone without one, the wait is up or Redis
        failed (the caller then goes upstream itself)."""
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(lease.wait_s):
                return await self._poll(lease.key)
        except TimeoutError:
            return None
        except RedisError as exc:
            self.store.failed("read", exc)
            return None

    async def _poll(self, key: str) -> Entry | None:
        pause = FIRST_PAUSE_S
        while True:
            await asyncio.sleep(pause)
            async with self.store.client.pipeline(transaction=False) as pipe:
                # the lease first: an owner stores before it releases, so a lease seen gone means an entry
                # stored by then is seen by the read after it
                pipe.pttl(lease_key(key))
                pipe.get(RedisCache.entry_key(key))
                left_ms, data = await pipe.execute()
            if data is not None:
                return Entry.from_bytes(data)
            if left_ms < 0:
                return None
            pause = min(pause * 1.5, MAX_PAUSE_S)

    def leave(self, lease: Lease) -> None:
        return None  # waiters are not counted in Redis

    async def land(self, lease: Lease, entry: Entry | None, ttl_s: float) -> None:
        """The owner's end: `entry` stored (when there is one to store) and the lease released, one round trip."""
        from redis.exceptions import RedisError

        data = b"" if entry is None else entry.to_bytes()
        keys = (lease_key(lease.key), RedisCache.entry_key(lease.key))
        try:
            stored = await self.store.client.eval(LAND, 2, *keys, lease.token or "", data, RedisCache.seconds(ttl_s))
        except RedisError as exc:  # the lease ends with its TTL; the entry is not stored
            self.store.failed("write", exc)
            return
        if stored != b"OK":  # e.g. OOM: released, the others go upstream
            self.store.failed("write", RedisError(stored.decode(errors="replace")))


@dataclass(slots=True)
class _Flight:
    token: str
    ends: float  # the loop's clock: past it, the next miss of the key takes the lease over
    answer: asyncio.Future[Entry | None]
    waiters: int = 0


@dataclass(slots=True)
class LocalFlights:
    """The lease of `Flights` among the requests of one process (the entries in memory or SQLite). `max_flights`:
    the keys being called upstream at once (a flood of distinct keys past it: plain misses); `max_waiters`: the
    requests waiting on one (more of them: each goes upstream itself, as without a lease)."""

    store: CacheStore
    wait_cap_s: float
    max_flights: int
    max_waiters: int
    _flights: dict[str, _Flight] = field(default_factory=dict)
    _tokens: itertools.count[int] = field(default_factory=itertools.count)

    def __len__(self) -> int:
        return len(self._flights)

    async def claim(self, key: str, limit_s: float | None) -> Lease | None:
        """Ours when no request of this process is calling for `key` (or its lease ran out); another's, with
        what is left of it to wait, when one is; None past the bounds (the request goes on as a plain miss)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        flight = self._flights.get(key)
        if flight is not None and now < flight.ends:
            if flight.waiters >= self.max_waiters:
                return None
            flight.waiters += 1  # counted at once: the wait that follows is this lease's
            return Lease(key, wait_s=min(flight.ends - now, self.wait_cap_s), waits_on=flight.token)
        if flight is None and len(self._flights) >= self.max_flights:
            return None
        if flight is not None and not flight.answer.done():  # its lease ran out: its waiters' time is up too
            flight.answer.set_result(None)
        token = str(next(self._tokens))
        self._flights[key] = _Flight(token, now + lease_s(self.wait_cap_s, limit_s), loop.create_future())
        return Lease(key, token=token)

    async def wait(self, lease: Lease) -> Entry | None:
        """The entry the owner's call produced, or None once it ended without one or the wait is up. A waiter
        cancelled (its client gone) leaves the owner's call and the other waiters as they were."""
        flight = self._counted(lease)
        if flight is None:  # landed between the claim and this wait: the entry, if any, is in the store
            return await self.store.get(lease.key)
        try:
            async with asyncio.timeout(lease.wait_s):
                return await asyncio.shield(flight.answer)
        except TimeoutError:
            return None
        finally:
            flight.waiters -= 1

    def leave(self, lease: Lease) -> None:
        flight = self._counted(lease)
        if flight is not None:
            flight.waiters -= 1

    def _counted(self, lease: Lease) -> _Flight | None:
        """The flight a waiter's lease was counted in, while it flies: not a later flight of the same key (the
        first landed and another request claimed the key while this one awaited its waiting place), whose
        waiters it never joined (second review: leaving that one took a waiter off its count)."""
        flight = self._flights.get(lease.key)
        return flight if flight is not None and flight.token == lease.waits_on else None

    async def land(self, lease: Lease, entry: Entry | None, ttl_s: float) -> None:
        """The owner's end: `entry` stored (when there is one), the lease released (only while it is still this
        owner's) and its waiters answered with the entry, or with None: they go upstream themselves."""
        stored = None
        try:
            if entry is not None:
                await self.store.put(lease.key, entry, ttl_s)
                stored = entry
        finally:  # a store that failed (or a cancelled put) still releases: the waiters go upstream at once
            flight = self._flights.get(lease.key)
            if flight is not None and flight.token == lease.token:
                del self._flights[lease.key]
                if not flight.answer.done():
                    flight.answer.set_result(stored)
