"""The counter contract, run against both stores: in-process and real Redis (Lua)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from margin.governance.redis_store import RedisStore
from margin.governance.store import Admitted, Gcra, Hold, Store


def next_id() -> str:
    return uuid.uuid4().hex


async def admit(store: Store, request_id: str, holds: list[Hold], ttl_s: float, *rate: Any) -> Admitted:
    """`store.admit` as the admit step calls it: every counter reconciled (seeded) first, here with 0 (a
    counter seeded before keeps its value)."""
    for item in holds:
        await store.seed(item.counter, 0, item.expire_s)
    return await store.admit(request_id, holds, ttl_s, *rate)


def hold(counter: str = "b@1", limit: int = 100, amount: int = 30, hard: bool = True) -> Hold:
    return Hold(counter, limit, amount, hard, 3600)


async def reservations(store: Store, page: int = 1000) -> list[str]:
    """Every page of `store.reservations`, each checked to hold at most `page` ids."""
    found: list[str] = []
    async for ids in store.reservations(page):
        assert 0 < len(ids) <= page
        found += ids
    return found


async def test_reserve_is_all_or_nothing(store: Store) -> None:
    assert (await admit(store, "r1", [hold("a", 100, 60), hold("b", 100, 60)], 60)).failed is None
    # b fits (60 + 30 <= 100) but a does not: nothing of r2 is reserved anywhere
    assert (await admit(store, "r2", [hold("b", 100, 30), hold("a", 100, 50)], 60)).failed == 1
    assert await store.counters(["a", "b"]) == {"a": (0, 60), "b": (0, 60)}


async def test_settle_moves_reservation_to_spend_once(store: Store) -> None:
    await admit(store, "r1", [hold("a", 100, 60)], 60)
    assert await store.settle("r1", {"a": 25}) is True
    assert await store.settle("r1", {"a": 25}) is False  # replay is a no-op
    assert await store.counters(["a"]) == {"a": (25, 0)}
    assert await store.pending() == 0
    # a settled request id cannot reserve again
    assert (await admit(store, "r1", [hold("a", 100, 60)], 60)).failed is None
    assert await store.counters(["a"]) == {"a": (25, 0)}


async def test_soft_holds_never_refuse_and_counters_come_back(store: Store) -> None:
    await store.seed("a", 7, 3600)
    reserved = await admit(store, "r1", [hold("a", 10, 50, hard=False), hold("b", 100, 5)], 60)
    assert reserved.failed is None and reserved.counters == ((7, 50), (0, 5))
    refused = await admit(store, "r2", [hold("b", 100, 96)], 60)
    assert refused.failed == 0 and refused.counters == ((0, 5),)


async def test_stale_reservations_are_charged_not_released(store: Store) -> None:
    await admit(store, "old", [hold("a", 100, 70)], 0.05)
    await admit(store, "new", [hold("a", 100, 20)], 60)
    await asyncio.sleep(1.1)  # Redis TIME has second + microsecond resolution
    assert await store.reap() == 1
    # charged at the reserved amount: a request that never settles cannot spend past a hard budget
    assert await store.counters(["a"]) == {"a": (70, 20)}
    assert await store.pending() == 1
    assert (await admit(store, "more", [hold("a", 100, 11)], 60)).failed == 0  # 70 + 20 + 11 > 100
    # the late request settles its actual spend exactly once, replacing the charge
    assert await store.settle("old", {"a": 65}) is True
    assert await store.counters(["a"]) == {"a": (65, 20)}
    assert await store.settle("old", {"a": 65}) is False
    assert await store.counters(["a"]) == {"a": (65, 20)}


async def test_seed_only_sets_missing_counters(store: Store) -> None:
    assert await store.seed("a", 40, 3600) is True
    assert await store.seed("a", 99, 3600) is False
    assert (await admit(store, "r1", [hold("a", 100, 61)], 60)).failed == 0  # 40 spent + 61 > 100
    assert await store.counters(["a"]) == {"a": (40, 0)}


async def test_gcra_allows_a_burst_then_paces(store: Store) -> None:
    rpm = Gcra("rpm:key=k", increment_s=60 / 3, tau_s=60)
    results = [(await admit(store, next_id(), [], 60, [rpm], [False])).wait for _ in range(4)]
    assert results[:3] == [0.0, 0.0, 0.0]
    assert 15 < results[3] <= 20.5  # the 4th must wait about one emission interval


async def test_gcra_debt_only_admits_until_in_debt(store: Store) -> None:
    tpm = Gcra("tpm:key=k", increment_s=60 * 50 / 100, tau_s=60)  # 50 tokens against 100/min
    assert (await admit(store, next_id(), [], 60, [tpm], [True])).wait == 0.0
    assert (await admit(store, next_id(), [], 60, [tpm], [True])).wait == 0.0  # at the limit, not yet over it
    # the answers' tokens are charged when the request settles
    assert await store.settle("r-tpm", {}, [("tpm:key=k", 60 * 80 / 100)]) is True
    assert (await admit(store, next_id(), [], 60, [tpm], [True])).wait > 0


async def test_budget_refusal_charges_no_rate_and_rate_refusal_reserves_nothing(store: Store) -> None:
    rpm = Gcra("rpm:x", 30.0, 60.0)  # 2 per minute
    refused = await admit(store, "r1", [hold("a", 10, 50)], 60, [rpm], [False])
    assert refused.failed == 0 and refused.wait == 0
    assert (await admit(store, "r2", [hold("a", 100, 10)], 60, [rpm], [False])).ok
    assert (await admit(store, "r3", [hold("a", 100, 10)], 60, [rpm], [False])).ok  # r1 used no rate
    limited = await admit(store, "r4", [hold("a", 100, 10)], 60, [rpm], [False])
    assert limited.wait > 0 and limited.failed is None
    assert await store.counters(["a"]) == {"a": (0, 20)}  # r4 reserved nothing
    assert await store.pending() == 2


async def test_gcra_checks_are_all_or_nothing(store: Store) -> None:
    tight = Gcra("rpm:a", 60.0, 60.0)  # 1 per minute
    loose = Gcra("rpm:b", 60.0, 3600.0)  # 60 an hour: one comes back a minute (at 60 a minute, a 1 s stall freed one)
    assert (await admit(store, next_id(), [], 60, [tight, loose], [False, False])).wait == 0.0
    assert (await admit(store, next_id(), [], 60, [tight, loose], [False, False])).wait > 0
    for _ in range(59):  # b was charged once only: 59 more fit in its hour
        assert (await admit(store, next_id(), [], 60, [loose], [False])).wait == 0.0
    assert (await admit(store, next_id(), [], 60, [loose], [False])).wait > 0


async def test_amounts_of_any_size_are_reserved_settled_and_reaped_exactly(store: Store) -> None:
    """2 × 10^17 nano-USD ($200M: an absurd worst case under a soft budget). Lua writes a number that large as
    `2e+17`, which HINCRBY refused halfway through the admit script, leaving a reservation no reaper saw."""
    big = 2 * 10**17 + 3
    holds = [hold("a", 10, 5), hold("big", 10, big, hard=False), hold("zero", 10, 0)]  # 0: a free model's hold
    assert (await admit(store, "r1", holds, 60)).failed is None
    assert await store.counters(["a", "big", "zero"]) == {"a": (0, 5), "big": (0, big), "zero": (0, 0)}
    assert await store.settle("r1", {"a": 4, "big": big - 1, "zero": 0}) is True
    assert await store.counters(["a", "big", "zero"]) == {"a": (4, 0), "big": (big - 1, 0), "zero": (0, 0)}
    await admit(store, "r2", [hold("big", 10, big, hard=False), hold("zero", 10, 0)], 0.05)
    await asyncio.sleep(1.1)  # Redis TIME has second + microsecond resolution
    assert await store.reap() == 1 and await store.pending() == 0
    assert await store.counters(["big", "zero"]) == {"big": (2 * big - 1, 0), "zero": (0, 0)}
    assert await store.settle("r2", {"big": 1, "zero": 0}) is True  # a late settle replaces the charge
    assert await store.counters(["big", "zero"]) == {"big": (big, 0), "zero": (0, 0)}


async def test_a_counter_the_store_lost_is_reported_and_stays_lost_until_seeded(store: Store) -> None:
    """Redis restarted without persistence: counters a process had reconciled are gone. Admitting against one
    checks nothing and says so (the admit step then reconciles from the ledger and admits again); settling a
    request into a lost counter leaves it lost rather than holding only what settled since."""
    assert (await admit(store, "r1", [hold("a", 100, 60)], 60)).failed is None
    if not isinstance(store, RedisStore):
        return  # the process's own counters are lost only with the process
    await store._redis.flushdb()
    assert await store.settle("r1", {"a": 50}) is True
    assert await store.counters(["a"]) == {"a": (0, 0)} and await store._redis.exists("mgn:c:a") == 0
    lost = await store.admit("r2", [hold("a", 100, 60)], 60)
    assert lost.unseeded and not lost.ok and await store.pending() == 0
    await store.seed("a", 90, 3600)  # what the ledger says was spent
    assert (await store.admit("r2", [hold("a", 100, 60)], 60)).failed == 0


async def test_raising_a_counter_never_lowers_it_nor_makes_a_lost_one(store: Store) -> None:
    """After a restart from a snapshot (margin.governance.service: a new `server_id`), each counter is raised to
    the ledger's spend: only raised, and a counter that is gone stays gone (the admit step reconciles it)."""
    await store.seed("a", 10, 3600)
    assert await store.raise_spent("a", 25) is True and await store.counters(["a"]) == {"a": (25, 0)}
    assert await store.raise_spent("a", 5) is False and await store.counters(["a"]) == {"a": (25, 0)}
    assert await store.raise_spent("gone", 5) is False and await store.counters(["gone"]) == {"gone": (0, 0)}
    assert await store.server_id() == await store.server_id()


async def test_recount_settles_finished_reservations_again_with_their_rows_cost(store: Store) -> None:
    """After a restart from a snapshot: the reservations of requests the ledger has rows for are settled again
    with what their rows cost (their settles were lost; a later settle is a no-op) when every counter they hold
    is one recounted in the same step; the others stay. Dropping them without their cost lost it wherever the
    raise did nothing: here "b" holds more than the ledger says (settles whose rows are not in it yet)."""
    await admit(store, "done", [hold("a", 1000, 30), hold("b", 1000, 40)], 60)
    await admit(store, "other", [hold("a", 1000, 30), hold("c", 1000, 50)], 60)  # "c" is not recounted here
    await admit(store, "open", [hold("a", 1000, 30)], 60)  # no ledger row yet
    await admit(store, "reaped", [hold("b", 1000, 25)], 0)
    assert await store.reap() == 1 and await store.counters(["b"]) == {"b": (25, 40)}  # charged by a reaper
    assert sorted(await reservations(store)) == ["done", "open", "other", "reaped"]
    rows = {"done": {"a": 7, "b": 8}, "other": {"a": 3}, "reaped": {"b": 9}, "unknown": {"a": 1}}
    done = await store.recount({"a": 20, "b": 0, "gone": 5}, rows)
    assert done.dropped == 2 and done.raised == ["a"]
    # a: 7 replayed, then raised to the ledger's 20; b: 8 + 9 replayed, the reaper's 25 undone (was 0: lost)
    assert await store.counters(["a", "b", "c"]) == {"a": (20, 60), "b": (17, 0), "c": (0, 50)}
    assert sorted(await reservations(store)) == ["open", "other"]
    assert await store.settle("reaped", {"b": 9}) is False
    assert await store.settle("done", {"a": 7, "b": 7}) is False  # settled once, by the recount
    assert await store.settle("open", {"a": 5}) is True
    assert await store.counters(["a"]) == {"a": (25, 30)}


async def test_reservations_come_in_pages_of_the_size_asked(store: Store) -> None:
    """The pass after a restart reads the reservations a page at a time (before: every id in one reply): open and
    reaped alike, each once when nothing changes meanwhile."""
    for i in range(8):
        await admit(store, f"open{i}", [hold("a", 10_000, 1)], 600)
    for i in range(3):
        await admit(store, f"reaped{i}", [hold("a", 10_000, 1)], 0)
    assert await store.reap() == 3
    found = await reservations(store, page=3)
    assert sorted(found) == sorted([*(f"open{i}" for i in range(8)), *(f"reaped{i}" for i in range(3))])
