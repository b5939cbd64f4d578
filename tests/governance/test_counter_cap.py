"""A budget counter at the most its 64 bits hold (SPENT_CAP: a soft budget seeded from hostile rows) stays there as
more is spent, in both stores: Redis' HINCRBY past it failed ("increment or decrement would overflow"), so the
settle was lost (the reservation left to the reaper, which failed on it at every pass); the in-process store read
past what Redis holds. A hard budget there still refuses; a soft one goes on."""

from __future__ import annotations

import asyncio

from redis import asyncio as aioredis

from margin.governance.redis_scripts import P
from margin.governance.redis_store import RedisStore
from margin.governance.store import Hold, Store
from margin.ledger.read.budget import SPENT_CAP

COUNTER = "soft@1"


def soft(amount: int) -> Hold:
    return Hold(COUNTER, 100, amount, False, 3600)


async def test_a_settle_into_a_counter_at_the_cap_stays_at_the_cap(store: Store) -> None:
    await store.seed(COUNTER, SPENT_CAP, 3600)
    for request_id in ("r1", "r2"):
        admitted = await store.admit(request_id, [soft(30)], 60)
        assert admitted.ok and admitted.counters == ((SPENT_CAP, 30),)
        assert await store.settle(request_id, {COUNTER: 30}) is True  # Redis, before: ResponseError (overflow)
        assert await store.counters([COUNTER]) == {COUNTER: (SPENT_CAP, 0)}
    assert await store.pending() == 0


async def test_a_hard_budget_at_the_cap_still_refuses(store: Store) -> None:
    await store.seed(COUNTER, SPENT_CAP, 3600)
    refused = await store.admit("r1", [Hold(COUNTER, 100, 1, True, 3600)], 60)
    assert refused.failed == 0 and await store.pending() == 0


async def test_the_reaper_charges_into_a_counter_at_the_cap(store: Store) -> None:
    """The reaper's charge of a reservation past its deadline (a lost settle) into such a counter."""
    await store.seed(COUNTER, SPENT_CAP - 10, 3600)
    assert (await store.admit("r1", [soft(30)], 0.05)).ok
    await asyncio.sleep(0.1)
    assert await store.reap() == 1  # Redis, before: the whole reap script failed, this reservation at every pass
    assert await store.counters([COUNTER]) == {COUNTER: (SPENT_CAP, 0)}
    assert await store.pending() == 0


async def test_reservations_past_the_cap_are_held_at_it(store: Store) -> None:
    """Three soft reservations of 2^62 nano-USD each (a soft budget never refuses) add past 2^63."""
    await store.seed(COUNTER, 0, 3600)
    for request_id in ("r1", "r2", "r3"):
        assert (await store.admit(request_id, [soft(2**62)], 60)).ok  # Redis, before: the second failed
    assert await store.counters([COUNTER]) == {COUNTER: (0, SPENT_CAP)}


async def test_reservations_held_at_the_cap_release_down_to_zero_not_below(store: Store) -> None:
    """Those three settled: each took its 2^62 off a `reserved` held at SPENT_CAP, and the third left it at
    -2^62 - 1 (both stores); it now stops at 0, never below, at every step."""
    await store.seed(COUNTER, 0, 3600)
    for request_id in ("r1", "r2", "r3"):
        assert (await store.admit(request_id, [soft(2**62)], 60)).ok
    for request_id in ("r1", "r2", "r3"):
        assert await store.settle(request_id, {COUNTER: 5}) is True
        reserved = (await store.counters([COUNTER]))[COUNTER][1]
        assert reserved >= 0  # before: -2**62 - 1 after the third
    assert await store.counters([COUNTER]) == {COUNTER: (15, 0)}
    assert await store.pending() == 0


async def test_the_reaper_releases_reservations_held_at_the_cap_down_to_zero(store: Store) -> None:
    await store.seed(COUNTER, 0, 3600)
    for request_id in ("r1", "r2", "r3"):
        assert (await store.admit(request_id, [soft(2**62)], 0.05)).ok
    await asyncio.sleep(0.1)
    assert await store.reap() == 3
    assert await store.counters([COUNTER]) == {COUNTER: (SPENT_CAP, 0)}  # before: reserved -2**62 - 1
    assert await store.pending() == 0


async def test_a_parked_spend_seeded_onto_the_cap_stays_at_the_cap(redis_url: str) -> None:
    """A settle while the Redis counter was gone is parked, and added by the seed that makes it again."""
    client = aioredis.from_url(redis_url)
    await client.flushdb()
    store = RedisStore(redis_url)
    try:
        await store.seed(COUNTER, 0, 3600)
        assert (await store.admit("r1", [soft(30)], 60)).ok
        await client.delete(f"{P}c:{COUNTER}")  # lost (an eviction, a restart without its data)
        assert await store.settle("r1", {COUNTER: 30}) is True
        assert await store.parked(COUNTER) == ["r1"]
        assert await store.seed(COUNTER, SPENT_CAP, 3600) is True  # before: the seed failed
        assert await store.counters([COUNTER]) == {COUNTER: (SPENT_CAP, 0)}
    finally:
        await store.close()
        await client.aclose()


async def test_a_reaper_charge_undone_leaves_a_spent_at_the_cap_there(store: Store) -> None:
    """A reservation of 2^62 reaped into a counter at SPENT_CAP - 10 (held at the cap: 10 of it counted), then
    settled late at what it cost (0): the reaper's charge was taken off in full, and the counter read 2^62 + 10
    less than was spent before (`spent` went down). A spent held at the cap now stays there."""
    await store.seed(COUNTER, SPENT_CAP - 10, 3600)
    assert (await store.admit("r1", [soft(2**62)], 0.05)).ok
    await asyncio.sleep(0.1)
    assert await store.reap() == 1
    assert await store.counters([COUNTER]) == {COUNTER: (SPENT_CAP, 0)}
    assert await store.settle("r1", {COUNTER: 0}) is True
    assert await store.counters([COUNTER]) == {COUNTER: (SPENT_CAP, 0)}  # before: SPENT_CAP - 2**62
