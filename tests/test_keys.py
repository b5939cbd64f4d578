"""KeyCache: expiry refreshes with one query however many requests arrive meanwhile."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

import pytest

from margin.keys import KeyCache, new_key


class _Result:
    def __init__(self, value: Any) -> None:
        self.value = value

    def scalar_one(self) -> Any:
        return self.value

    def first(self) -> Any:
        return None  # no such key


class _Connection:
    def __init__(self, engine: _SlowEngine) -> None:
        self.engine = engine

    async def __aenter__(self) -> _Connection:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        return None

    async def execute(self, query: Any) -> _Result:
        self.engine.queries += 1
        await asyncio.sleep(0.02)
        if self.engine.fail:
            raise RuntimeError("database down")
        return _Result(self.engine.count)


class _SlowEngine:
    """An AsyncEngine stand-in whose queries take 20 ms and are counted."""

    def __init__(self, count: int = 0) -> None:
        self.count = count
        self.queries = 0
        self.fail = False

    def connect(self) -> _Connection:
        return _Connection(self)


async def test_concurrent_requests_share_one_refresh() -> None:
    engine = _SlowEngine(count=3)
    cache = KeyCache(engine, ttl_s=60)
    assert await asyncio.gather(*(cache.active_keys() for _ in range(50))) == [3] * 50
    assert engine.queries == 1
    assert await cache.active_keys() == 3  # cached now
    assert engine.queries == 1
    cache.forget()
    engine.count = 2
    assert await asyncio.gather(*(cache.active_keys() for _ in range(10))) == [2] * 10
    assert engine.queries == 2


async def test_concurrent_lookups_of_one_key_share_one_query() -> None:
    engine = _SlowEngine()
    cache = KeyCache(engine, ttl_s=60)
    (_, x), (_, y) = new_key(), new_key()
    found = await asyncio.gather(*(cache.lookup(x) for _ in range(20)), cache.lookup(y))
    assert found == [None] * 21
    assert engine.queries == 2  # one per distinct key
    assert await cache.lookup(x) is None and engine.queries == 2  # a key not found is cached too


async def test_malformed_keys_never_reach_the_database() -> None:
    engine = _SlowEngine()
    cache = KeyCache(engine, ttl_s=60)
    _, good = new_key()
    for bad in ("mgn_x_y", "sk-" + "a" * 48, good + "x", good[:-1], good.replace("mgn_", "MGN_"), "", "x" * 5000):
        assert await cache.lookup(bad) is None
    assert engine.queries == 0 and cache.queries == 0


async def test_lookups_of_unseen_keys_are_bounded_in_flight() -> None:
    engine = _SlowEngine()
    cache = KeyCache(engine, ttl_s=60, max_lookups=3)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, 3 - cache._lookups._value)
            await asyncio.sleep(0.001)

    watcher = asyncio.ensure_future(watch())
    await asyncio.gather(*(cache.lookup(new_key()[1]) for _ in range(30)))
    watcher.cancel()
    assert engine.queries == 30 and peak == 3


async def test_a_failed_refresh_fails_its_waiters_and_the_next_request_retries() -> None:
    engine = _SlowEngine(count=1)
    engine.fail = True
    cache = KeyCache(engine, ttl_s=60)
    results = await asyncio.gather(*(cache.active_keys() for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert engine.queries == 1
    engine.fail = False
    assert await cache.active_keys() == 1
    assert engine.queries == 2


async def test_a_cancelled_waiter_does_not_cancel_the_refresh() -> None:
    engine = _SlowEngine(count=4)
    cache = KeyCache(engine, ttl_s=60)
    first = asyncio.ensure_future(cache.active_keys())
    await asyncio.sleep(0.005)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await cache.active_keys() == 4
    assert engine.queries == 1
