"""`Store.extend`, in both stores: an open reservation's holds changed after admission, all or nothing (a
fallback's top-up by what failed attempts were billed; a coalesced waiter's reservation given back and taken
again), released or reaped with the rest of the reservation."""

from __future__ import annotations

import asyncio

import pytest

from margin.governance.redis_scripts import P
from margin.governance.redis_store import RedisStore
from margin.governance.store import Hold, Store

COUNTER = "soft@1"
HARD = "hard@1"


def soft(amount: int) -> Hold:
    return Hold(COUNTER, 100, amount, False, 3600)


def hard(amount: int) -> Hold:
    return Hold(HARD, 100, amount, True, 3600)


async def test_a_top_up_extends_the_open_reservation_all_or_nothing(store: Store) -> None:
    """`extend` (a fallback's top-up) sets what the reservation holds on each counter: the growth added to
    reserved and to the reservation (released with it), refused whole when a hard hold has no room, and refused
    for a reservation no longer open (fail closed, `gone`: not a budget with no room)."""
    await store.seed(COUNTER, 0, 3600)
    await store.seed(HARD, 0, 3600)
    assert (await store.admit("r1", [soft(30), hard(60)], 60)).ok
    grown = await store.extend("r1", [soft(70), hard(100)])
    assert grown.failed is None and grown.counters == ((0, 70), (0, 100))
    refused = await store.extend("r1", [soft(75), hard(101)])
    assert refused.failed == 1 and await store.counters([COUNTER, HARD]) == {COUNTER: (0, 70), HARD: (0, 100)}
    assert await store.settle("r1", {COUNTER: 70, HARD: 100}) is True
    assert await store.counters([COUNTER, HARD]) == {COUNTER: (70, 0), HARD: (100, 0)}
    gone = await store.extend("r1", [soft(71)])  # settled: nothing added
    assert gone.gone and gone.failed is None and not gone.ok
    assert await store.counters([COUNTER]) == {COUNTER: (70, 0)}


async def test_an_extend_made_again_changes_nothing_more(store: Store) -> None:
    """The amounts are what the reservation is to hold, not changes: an extend sent again (its reply lost after
    the store ran it) leaves the counters as one did, a give-back (0) as well, and a soft hold is not checked."""
    await store.seed(COUNTER, 0, 3600)
    await store.seed(HARD, 0, 3600)
    assert (await store.admit("r1", [soft(30), hard(60)], 60)).ok
    for _ in range(2):
        assert (await store.extend("r1", [soft(200), hard(80)])).ok  # soft: past its limit of 100, unchecked
        assert await store.counters([COUNTER, HARD]) == {COUNTER: (0, 200), HARD: (0, 80)}
    for _ in range(2):
        assert (await store.extend("r1", [soft(0), hard(0)])).ok
        assert await store.counters([COUNTER, HARD]) == {COUNTER: (0, 0), HARD: (0, 0)}
    assert await store.settle("r1", {COUNTER: 0, HARD: 0}) is True
    assert await store.counters([COUNTER, HARD]) == {COUNTER: (0, 0), HARD: (0, 0)}


async def test_a_hold_given_back_and_taken_again_nets_out(store: Store) -> None:
    """A waiter's reservation given back (0: `reserved` down, nothing checked), then taken again (checked:
    refused while another holds the room), then reaped: charged what it holds, not more."""
    await store.seed(HARD, 0, 3600)
    assert (await store.admit("r1", [hard(60)], 0.3)).ok
    assert (await store.extend("r1", [hard(0)])).counters == ((0, 0),)
    assert (await store.admit("r2", [hard(50)], 60)).ok  # the room given back, taken by another
    refused = await store.extend("r1", [hard(60)])
    assert refused.failed == 0 and refused.counters == ((0, 50),)
    assert await store.settle("r2", {HARD: 0}) is True
    assert (await store.extend("r1", [hard(60)])).failed is None
    await asyncio.sleep(0.4)
    assert await store.reap() == 1
    assert await store.counters([HARD]) == {HARD: (60, 0)}  # the reservation's 60, once


@pytest.mark.parametrize("store", ["redis"], indirect=True)  # the store in this process never loses a counter
async def test_a_lost_counter_fails_only_a_hard_hold_that_grows(store: Store) -> None:
    """A counter the store lost (a Redis restarted without persistence, flushed, evicted): a soft hold on it is
    set as on any other (it was refused as a budget with no room: "spent $0, reserved $0", a 429 where admission
    would have seeded it again), and is left gone for the next seed to read the ledger; a hard one that grows
    reads `unseeded` (seed, then extend again) and changes nothing. Redis only: the store in this process never
    loses one."""
    assert isinstance(store, RedisStore)
    await store.seed(COUNTER, 0, 3600)
    await store.seed(HARD, 0, 3600)
    assert (await store.admit("r1", [soft(30), hard(60)], 60)).ok
    await store.client.delete(f"{P}c:{COUNTER}")
    grown = await store.extend("r1", [soft(35), hard(60)])
    assert grown.ok and grown.counters == ((0, 0), (0, 60))
    assert not await store.client.exists(f"{P}c:{COUNTER}")  # left gone: not remade holding only this hold
    assert (await store.extend("r1", [soft(0), hard(0)])).ok  # given back: nothing checked
    await store.client.delete(f"{P}c:{HARD}")
    lost = await store.extend("r1", [soft(0), hard(10)])
    assert lost.unseeded and lost.failed is None and not lost.ok
    assert await store.seed(HARD, 0, 3600) is True
    assert (await store.extend("r1", [soft(0), hard(10)])).ok
    assert await store.counters([COUNTER, HARD]) == {COUNTER: (0, 0), HARD: (0, 10)}
