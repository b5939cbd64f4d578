"""`Store.extend`, in both stores: an open reservation's holds changed after admission, all or nothing (a
fallback's top-up by what failed attempts were billed; a coalesced waiter's reservation given back and taken
again), released or reaped with the rest of the reservation."""

from __future__ import annotations

import asyncio

from margin.governance.store import Hold, Store

COUNTER = "soft@1"
HARD = "hard@1"


def soft(amount: int) -> Hold:
    return Hold(COUNTER, 100, amount, False, 3600)


def hard(amount: int) -> Hold:
    return Hold(HARD, 100, amount, True, 3600)


async def test_a_top_up_extends_the_open_reservation_all_or_nothing(store: Store) -> None:
    """`extend` (a fallback's top-up): added to reserved and to the reservation (released with it), refused
    whole when a hard hold has no room, and refused for a reservation no longer open (fail closed)."""
    await store.seed(COUNTER, 0, 3600)
    await store.seed(HARD, 0, 3600)
    assert (await store.admit("r1", [soft(30), hard(60)], 60)).ok
    grown = await store.extend("r1", [soft(40), hard(40)])
    assert grown.failed is None and grown.counters == ((0, 70), (0, 100))
    refused = await store.extend("r1", [soft(5), hard(1)])
    assert refused.failed == 1 and await store.counters([COUNTER, HARD]) == {COUNTER: (0, 70), HARD: (0, 100)}
    assert await store.settle("r1", {COUNTER: 70, HARD: 100}) is True
    assert await store.counters([COUNTER, HARD]) == {COUNTER: (70, 0), HARD: (100, 0)}
    assert (await store.extend("r1", [soft(1)])).failed == 0  # settled: nothing added
    assert await store.counters([COUNTER]) == {COUNTER: (70, 0)}


async def test_a_hold_given_back_and_taken_again_nets_out(store: Store) -> None:
    """A waiter's reservation given back (negative amounts: `reserved` down, nothing checked), then taken again
    (checked: refused while another holds the room), then reaped: charged what it holds, not more."""
    await store.seed(HARD, 0, 3600)
    assert (await store.admit("r1", [hard(60)], 0.3)).ok
    assert (await store.extend("r1", [hard(-60)])).counters == ((0, 0),)
    assert (await store.admit("r2", [hard(50)], 60)).ok  # the room given back, taken by another
    refused = await store.extend("r1", [hard(60)])
    assert refused.failed == 0 and refused.counters == ((0, 50),)
    assert await store.settle("r2", {HARD: 0}) is True
    assert (await store.extend("r1", [hard(60)])).failed is None
    await asyncio.sleep(0.4)
    assert await store.reap() == 1
    assert await store.counters([HARD]) == {HARD: (60, 0)}  # the reservation's 60, once
