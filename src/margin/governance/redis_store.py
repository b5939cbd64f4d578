"""Budget counters and rate limits in Redis, shared by every gateway replica: the store over the Lua scripts of
margin.governance.redis_scripts (one script an operation, so check-and-reserve is atomic across replicas; the keys'
layout is there)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from margin.errors import ConfigError, Overloaded
from margin.governance.redis_scripts import (
    ADMIT,
    CHANNEL,
    EXTEND,
    GONE,
    RAISE,
    REAP,
    RECOUNT,
    RENEW_SLOTS,
    RESTORE_SLOTS,
    SEED,
    SETTLE,
    TAKE_SLOT,
    UNSEEDED,
    P,
)
from margin.governance.slots import STREAMS
from margin.governance.store import RESERVATION_PAGE, Admitted, Gcra, Hold, Recount
from margin.logs import printable

log = logging.getLogger("margin.governance")


def unavailable(operation: str, exc: Exception) -> Overloaded:
    """A Redis failure as the client sees it: a fixed text (Redis' own names hosts, ports and internals; it
    goes to the log, escaped)."""
    log.warning("redis %s failed: %s", operation, printable(str(exc)))
    done = (  # a fallback's top-up or a coalesced waiter's reservation: admitted, its answer not yet called for
        "the request's budget reservation could not be changed, and no further upstream call was made"
        if operation == "extend"
        else "the request was not admitted"
    )
    return Overloaded(
        f"the budget and rate-limit store is unavailable; {done}, retry later", code="governance_unavailable"
    )


START_WAIT_S = 30.0  # how long a start waits for Redis to answer (RedisStore.ping)
EMBEDDED_DIR = "margin-redis-"  # the folder of the redis-server margin starts itself (margin.workers)
EMBEDDED_ENV = "MARGIN_EMBEDDED_REDIS"  # its URL, set by the supervisor for its workers (margin.workers)
SAFE_POLICY = "noeviction"
"""The one `maxmemory-policy` that never drops a budget counter, a reservation or a rate-limit key: `allkeys-*`
drop any key and `volatile-*` any with a TTL (counters and reservations have one), and a dropped counter
reads as nothing spent, so the budget would be spent again. Under noeviction a full Redis refuses writes: the
admission fails and the request is refused (`governance_unavailable`), which is failing closed."""


class RedisStore:
    """Same contract as `LocalStore`, over a shared Redis."""

    inline = False  # every call is a round trip

    def __init__(self, url: str, max_connections: int = 64, embedded: bool = False) -> None:
        from redis import asyncio as aioredis

        try:
            # a blocking pool: a burst of requests waits for a connection instead of failing
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=10, decode_responses=True
            )
        except ValueError as exc:
            raise ConfigError(f"storage.redis is not a redis:// URL: {exc}") from exc
        self._pool: Any = pool
        self._embedded = embedded  # margin's own redis-server (margin.workers.embedded_redis): not checked
        self._redis: Any = aioredis.Redis(connection_pool=pool)
        self._scripts = {
            name: self._redis.register_script(source)
            for name, source in {
                "admit": ADMIT,
                "settle": SETTLE,
                "extend": EXTEND,
                "reap": REAP,
                "seed": SEED,
                "raise": RAISE,
                "recount": RECOUNT,
                "take_slot": TAKE_SLOT,
                "renew_slots": RENEW_SLOTS,
                "restore_slots": RESTORE_SLOTS,
            }.items()
        }

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        from redis.exceptions import RedisError

        try:
            return await self._scripts[name](keys=keys, args=args)
        except RedisError as exc:
            raise unavailable(name, exc) from exc

    async def ping(self, wait_s: float = START_WAIT_S) -> None:
        """At start: a Redis that does not answer yet is waited for, up to `wait_s` (one still starting beside the
        gateway, or the embedded one its supervisor is starting again while a worker starts: before, that worker's
        failed start stopped every worker), then `ConfigError`."""
        from redis.exceptions import AuthenticationError, RedisError, ResponseError

        deadline, pause = time.monotonic() + wait_s, 0.1
        while True:
            try:  # one try is bounded too: a host that drops packets would hold the first connect for minutes
                await asyncio.wait_for(self._redis.ping(), max(deadline - time.monotonic(), 0.1))
                return
            except (AuthenticationError, ResponseError) as exc:  # answered, and no wait will change the answer
                raise ConfigError(f"storage.redis: Redis refused margin: {exc}") from exc
            except (RedisError, TimeoutError) as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConfigError(f"storage.redis: cannot reach Redis: {exc}") from exc
                if pause == 0.1:
                    log.warning("Redis does not answer yet (%s); waiting up to %g s", printable(str(exc)), wait_s)
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, 2.0)

    async def check_memory(self) -> None:
        """At start, after `ping`: the server's `maxmemory-policy` must be noeviction (`SAFE_POLICY`; else
        `ConfigError`), and a `maxmemory` of 0 (no bound: it grows until the host runs out) is warned about. A
        server that does not let margin run CONFIG GET (renamed or disabled, as managed services do, or an ACL
        user without it) is logged as unchecked, and the start goes on. margin's own embedded server (several
        workers, no storage.redis) is not checked: margin starts it without a bound and noeviction."""
        from redis.exceptions import RedisError, ResponseError

        if self._embedded:
            return
        try:
            found = await asyncio.wait_for(self._redis.config_get("maxmemory*"), START_WAIT_S)
        except ResponseError as exc:  # an unknown command, or NOPERM (a subclass)
            log.warning("storage.redis: CONFIG GET is not allowed (%s): maxmemory and its policy are not checked; they"
                     " must be a bound and noeviction (README, Replicas)", printable(str(exc)))  # fmt: skip
            return
        except (RedisError, TimeoutError) as exc:
            raise ConfigError(f"storage.redis: cannot read its CONFIG: {exc}") from exc
        policy, limit = str(found.get("maxmemory-policy", SAFE_POLICY)), str(found.get("maxmemory", "0"))
        if policy != SAFE_POLICY:
            raise ConfigError(
                f"storage.redis: maxmemory-policy is {printable(policy)!r}, which can evict budget counters and "
                f"rate-limit keys (then spent again); set it to {SAFE_POLICY} (CONFIG SET maxmemory-policy "
                f"{SAFE_POLICY}), and give the cache a Redis of its own (cache.redis) if it needs eviction"
            )
        if limit in ("0", ""):
            log.warning("storage.redis has no maxmemory: it grows until the host runs out of memory; set one (a"
                        " full Redis under noeviction refuses new requests rather than losing budgets)")  # fmt: skip

    async def admit(
        self,
        request_id: str,
        holds: Sequence[Hold],
        ttl_s: float,
        checks: Sequence[Gcra] = (),
        lenient: Sequence[bool] = (),
    ) -> Admitted:
        keys = [f"{P}r:{request_id}", f"{P}s:{request_id}", f"{P}deadlines"]
        keys += [f"{P}c:{hold.counter}" for hold in holds] + [f"{P}g:{check.key}" for check in checks]
        args: list[Any] = [request_id, ttl_s, len(holds)]
        for hold in holds:
            args += [hold.limit, hold.amount, "1" if hold.hard else "0", hold.expire_s or 0]
        for check, easy in zip(checks, lenient, strict=True):
            args += [repr(check.increment_s), repr(check.tau_s), "1" if easy else "0"]
        result = await self._run("admit", keys, args)
        status, wait, flat = int(result[0]), float(result[1]), [int(v) for v in result[2:]]
        counters = tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))
        if status == UNSEEDED:
            return Admitted(counters=counters, unseeded=True)
        return Admitted(wait, status - 1 if status > 0 else None, counters)

    async def extend(self, request_id: str, holds: Sequence[Hold]) -> Admitted:
        keys = [f"{P}r:{request_id}", *(f"{P}c:{hold.counter}" for hold in holds)]
        args: list[Any] = [len(holds)]
        for hold in holds:
            args += [hold.limit, hold.amount, "1" if hold.hard else "0"]
        result = await self._run("extend", keys, args)
        status, flat = int(result[0]), [int(v) for v in result[2:]]
        counters = tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))
        if status in (UNSEEDED, GONE):
            return Admitted(counters=counters, unseeded=status == UNSEEDED, gone=status == GONE)
        return Admitted(0.0, status - 1 if status > 0 else None, counters)

    async def settle(
        self, request_id: str, actual: Mapping[str, int], charges: Sequence[tuple[str, float]] = ()
    ) -> bool:
        keys = [f"{P}r:{request_id}", f"{P}s:{request_id}", f"{P}deadlines", f"{P}k:{request_id}", f"{P}reaped"]
        keys += [f"{P}c:{name}" for name in actual] + [f"{P}l:{name}" for name in actual]
        keys += [f"{P}g:{key}" for key, _ in charges]
        args = [request_id, len(actual), *actual.values(), *(repr(seconds) for _, seconds in charges)]
        return bool(await self._run("settle", keys, args))

    async def seed(self, counter: str, spent: int, expire_s: int | None, counted: Sequence[str] = ()) -> bool:
        keys = [f"{P}c:{counter}", f"{P}l:{counter}"]
        return bool(await self._run("seed", keys, [spent, expire_s or 0, *counted]))

    async def parked(self, counter: str) -> list[str]:
        from redis.exceptions import RedisError

        try:
            return [str(rid) for rid in await self._redis.hkeys(f"{P}l:{counter}")]
        except RedisError as exc:
            raise unavailable("parked", exc) from exc

    async def raise_spent(self, counter: str, spent: int) -> bool:
        return bool(await self._run("raise", [f"{P}c:{counter}"], [spent]))

    async def reservations(self, page: int = RESERVATION_PAGE) -> AsyncGenerator[list[str], None]:
        """Read with ZSCAN, `page` ids asked a call: a whole scan returns every member there from its start to its
        end, whatever is added or removed meanwhile (the caller's recounts, admits, another replica's reaper),
        and may return one twice. A set small enough to be packed (`zset-max-ziplist-entries`, 128) comes in one
        reply, cut in pages here. The open reservations first, then the reaped: the reaper only moves ids from
        the first to the second, so one it moves during the pass is still met."""
        from redis.exceptions import RedisError

        for key in (f"{P}deadlines", f"{P}reaped"):
            cursor = 0
            while True:
                try:
                    cursor, found = await self._redis.zscan(key, cursor, count=page)
                except RedisError as exc:
                    raise unavailable("reservations", exc) from exc
                for at in range(0, len(found), page):
                    yield [str(rid) for rid, _ in found[at : at + page]]
                if int(cursor) == 0:
                    break

    async def recount(self, spent: Mapping[str, int], replays: Mapping[str, Mapping[str, int]]) -> Recount:
        keys = [f"{P}deadlines", f"{P}reaped", *(f"{P}c:{name}" for name in spent)]
        args: list[Any] = [P, len(spent), *spent.values()]
        for request_id, amounts in replays.items():
            args += [request_id, *(amounts.get(name, 0) for name in spent)]
        dropped, up = await self._run("recount", keys, args)
        names = list(spent)
        return Recount(int(dropped), [names[int(i)] for i in up or []])

    async def server_id(self) -> str:
        from redis.exceptions import RedisError, ResponseError

        try:
            info = await self._redis.info("server")
        except ResponseError:  # INFO renamed or refused (some managed services): restarts cannot be seen
            return ""
        except RedisError as exc:
            raise unavailable("info", exc) from exc
        return str(info.get("run_id", ""))

    async def counters(self, names: Sequence[str]) -> dict[str, tuple[int, int]]:
        from redis.exceptions import RedisError

        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hmget(f"{P}c:{name}", "spent", "reserved")
        try:
            values = await pipe.execute()
        except RedisError as exc:
            raise unavailable("counters", exc) from exc
        return {name: (int(v[0] or 0), int(v[1] or 0)) for name, v in zip(names, values, strict=True)}

    async def reap(self) -> int:
        return int(await self._run("reap", [f"{P}deadlines", f"{P}reaped"], [P]))

    async def take_slot(self, key: str, lease: str, cap: int, lease_s: float, pool: str = STREAMS) -> bool:
        """A slot of API key `key` in `pool` (margin.governance.slots.SharedSlots)."""
        return bool(await self._run("take_slot", [f"{P}{pool}:{key}"], [lease, cap, repr(lease_s)]))

    async def free_slot(self, key: str, lease: str, pool: str = STREAMS) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.zrem(f"{P}{pool}:{key}", lease)
        except RedisError as exc:
            raise unavailable("free_slot", exc) from exc

    async def renew_slots(self, leases: Sequence[tuple[str, str]], lease_s: float, pool: str = STREAMS) -> list[int]:
        keys = [f"{P}{pool}:{key}" for key, _ in leases]
        lost = await self._run("renew_slots", keys, [repr(lease_s), *(lease for _, lease in leases)])
        return [int(index) for index in lost or []]

    async def restore_slots(self, leases: Sequence[tuple[str, str]], lease_s: float, pool: str = STREAMS) -> None:
        keys = [f"{P}{pool}:{key}" for key, _ in leases]
        await self._run("restore_slots", keys, [repr(lease_s), *(lease for _, lease in leases)])

    async def pending(self) -> int:
        return int(await self._redis.zcard(f"{P}deadlines"))

    async def generation(self, topic: str, bump: bool = False) -> str:
        from redis.exceptions import RedisError

        token = uuid.uuid4().hex if bump else None
        try:
            if token is not None:  # kept for the passes that read it, published for those listening (one step)
                pipe = self._redis.pipeline(transaction=True)
                pipe.set(f"{P}{topic}", token)
                pipe.publish(CHANNEL, f"{topic} {token}")
                await pipe.execute()
                return token
            return str(await self._redis.get(f"{P}{topic}") or "")
        except RedisError as exc:
            raise unavailable(f"{topic} announcement", exc) from exc

    @property
    def client(self) -> Any:
        """The redis-py asyncio client (margin.keywatch subscribes to `CHANNEL` with it)."""
        return self._redis

    async def close(self) -> None:
        await self._redis.aclose()
        await self._pool.disconnect()
