"""The lease of `margin.cache.flight` on a real Redis: one owner per key, a release that never drops another's
lease, waits bounded by the lease and the cap, no Redis asked after a failed read, a lease released when a
full Redis refuses the answer, and the config that turns it off."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from margin.cache.exact import Entry, MemoryCache, RedisCache
from margin.cache.flight import Flights, LocalFlights, lease_key
from margin.cache_config import CacheConfig
from margin.pipeline.steps.cache import Cache
from tests.helpers import free_port
from tests.servers import redis_server

ENTRY = Entry("an answer", "stop", 3, 2, 5000, "m", time.time())


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisCache]:
    cache = RedisCache(redis_url)
    yield cache
    await cache.close()


@pytest.fixture
def key() -> str:
    return uuid.uuid4().hex * 2


async def test_one_owner_and_the_others_are_answered_when_it_stores(store: RedisCache, key: str) -> None:
    flights = Flights(store, 5.0)
    owner = await flights.claim(key, 2.0)
    other = await flights.claim(key, 2.0)
    assert owner is not None and owner.token is not None
    assert other is not None and other.token is None and 1.5 < other.wait_s <= 2.0  # bounded by the time limit
    waiting = asyncio.create_task(flights.wait(other))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await flights.land(owner, ENTRY, 60)
    assert await asyncio.wait_for(waiting, 5) == ENTRY
    assert await store.client.exists(lease_key(key)) == 0
    assert await store.get(key) == ENTRY


async def test_a_release_without_an_answer_ends_the_wait_at_once(store: RedisCache, key: str) -> None:
    flights = Flights(store, 30.0)
    owner = await flights.claim(key, None)  # no time limit known: the cap
    other = await flights.claim(key, None)
    assert owner is not None and other is not None and 29 < other.wait_s <= 30
    waiting = asyncio.create_task(flights.wait(other))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await flights.land(owner, None, 60)  # failed, or not an answer the cache stores
    assert await asyncio.wait_for(waiting, 5) is None
    assert time.monotonic() - started < 5  # woken by the landing, not the 30 s cap (a loaded machine is slow)
    assert await store.get(key) is None


async def test_an_expired_lease_taken_again_is_never_released_by_its_first_owner(store: RedisCache, key: str) -> None:
    flights = Flights(store, 0.2)  # the cap bounds the lease too
    first = await flights.claim(key, 10.0)
    await asyncio.sleep(0.3)
    second = await flights.claim(key, 10.0)
    assert first is not None and second is not None and second.token not in (None, first.token)
    await flights.land(first, ENTRY, 60)  # late: its answer is stored, the second owner's lease stays
    assert await store.client.get(lease_key(key)) == second.token.encode()
    await flights.land(second, None, 60)
    assert await store.client.exists(lease_key(key)) == 0


async def test_a_wait_never_outlasts_the_cap(store: RedisCache, key: str) -> None:
    flights = Flights(store, 0.3)
    owner = await flights.claim(key, 600.0)  # an owner that never lands (its process died)
    other = await flights.claim(key, 600.0)
    assert owner is not None and other is not None and other.wait_s <= 0.3
    started = time.monotonic()
    assert await flights.wait(other) is None
    assert 0.25 < time.monotonic() - started < 5  # the 0.3 s cap, not the owner's 600 s


async def test_no_lease_is_asked_of_a_redis_whose_read_just_failed(tmp_path: object) -> None:
    gone = RedisCache(f"unix://{tmp_path}/nothing.sock")
    try:
        assert await gone.get("k") is None and not gone.reachable
        assert await Flights(gone, 5.0).claim("k", 1.0) is None
    finally:
        await gone.close()


async def test_the_cap_is_a_key_of_the_cache_section(redis_url: str) -> None:
    store = RedisCache(redis_url)
    try:
        assert Cache(CacheConfig(), store).flights is not None
        assert Cache(CacheConfig.model_validate({"coalesce_wait_s": 0}), store).flights is None
        memory = MemoryCache(1 << 20)
        assert isinstance(Cache(CacheConfig(), memory).flights, LocalFlights)  # one process: its own leases
        assert Cache(CacheConfig.model_validate({"coalesce_wait_s": 0}), memory).flights is None
    finally:
        await store.close()
    for wrong in (-1, 3601, "soon"):
        with pytest.raises(ValidationError):
            CacheConfig.model_validate({"coalesce_wait_s": wrong})


async def test_an_answer_a_full_redis_refuses_still_releases_the_lease(tmp_path: Path, key: str) -> None:
    with redis_server(free_port(), tmp_path) as url:
        store = RedisCache(url)
        try:
            flights = Flights(store, 5.0)
            owner = await flights.claim(key, 5.0)
            assert owner is not None and owner.token is not None
            await store.client.config_set("maxmemory-policy", "noeviction")
            await store.client.config_set("maxmemory", 1)  # full: writes that add memory are refused
            await flights.land(owner, ENTRY, 60)
            await store.client.config_set("maxmemory", 0)
            assert await store.client.exists(lease_key(key)) == 0  # the others go upstream at once, not in 5 s
            assert await store.get(key) is None
        finally:
            await store.close()
