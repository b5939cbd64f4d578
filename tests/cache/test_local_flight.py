"""Single flight in one process (`margin.cache.flight.LocalFlights`, the exact cache in memory or SQLite): the
lease's rules without Redis, its bounds, and the gateway end to end. One `margin serve` with the default
exact cache, a recording upstream that answers slowly (`tests/cache/test_flight.py`'s), the official SDK as the
client: identical cacheable requests at once make one upstream call, the others are hits at cost 0 (streams
replayed as streams); an owner that fails or whose client leaves lets the others go upstream after it; a flood
of distinct keys is served as plain misses. Before: each request missed and called upstream."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
import yaml

from margin import keys
from margin.cache.exact import Entry, MemoryCache
from margin.cache.flight import LocalFlights
from margin.cache_config import CacheConfig
from margin.config import parse_settings
from margin.errors import ConfigError, RateLimited
from margin.governance.slots import LocalSlots
from margin.ledger import db as ledger_db
from margin.pipeline.steps.cache import Cache
from margin.pipeline.values import Request, StreamSlot
from tests.cache.test_flight import (
    SLOW_S,
    Upstream,
    burst,
    check_failed_first,
    check_identical_burst,
    replicas,
)

ENTRY = Entry("an answer", "stop", 3, 2, 5000, "m", time.time())
DEFAULTS = CacheConfig()
BOUNDS = (DEFAULTS.coalesce_max_keys, DEFAULTS.coalesce_max_waiters)  # 10,000 keys, 1,000 waiters on one


async def test_one_owner_and_the_others_get_its_entry_without_reading_the_store() -> None:
    store = MemoryCache(1 << 20)
    flights = LocalFlights(store, 5.0, *BOUNDS)
    owner = await flights.claim("k", 2.0)
    others = [await flights.claim("k", 2.0) for _ in range(3)]
    assert owner is not None and owner.token is not None
    assert all(o is not None and o.token is None and 1.5 < o.wait_s <= 2.0 for o in others)  # the time limit
    waiting = [asyncio.create_task(flights.wait(o)) for o in others if o is not None]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in waiting)
    await flights.land(owner, ENTRY, 60)
    assert await asyncio.wait_for(asyncio.gather(*waiting), 1) == [ENTRY] * 3
    assert await store.get("k") == ENTRY and len(flights) == 0
    again = await flights.claim("k", 2.0)  # landed: the next miss owns a lease of its own
    assert again is not None and again.token not in (None, owner.token)


async def test_an_owner_without_an_answer_sends_its_waiters_upstream_at_once() -> None:
    flights = LocalFlights(MemoryCache(1 << 20), 30.0, *BOUNDS)
    owner, other = await flights.claim("k", None), await flights.claim("k", None)
    assert owner is not None and other is not None and 29 < other.wait_s <= 30  # no time limit known: the cap
    waiting = asyncio.create_task(flights.wait(other))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await flights.land(owner, None, 60)  # failed, cancelled, or not an answer the cache stores
    assert await asyncio.wait_for(waiting, 5) is None
    assert time.monotonic() - started < 5 and len(flights) == 0  # woken by the landing, not the 30 s cap


async def test_a_store_that_fails_still_releases_the_lease() -> None:
    """The owner's store raising (a SQLite cache's disk full) released nothing: its waiters waited out the lease
    (the backend's whole time limit) and the key stayed in flight. They are answered None at once now."""

    class Failing(MemoryCache):
        async def put(self, key: str, entry: Entry, ttl_s: float) -> None:
            raise OSError("disk full")

    flights = LocalFlights(Failing(1 << 20), 30.0, *BOUNDS)
    owner, other = await flights.claim("k", None), await flights.claim("k", None)
    assert owner is not None and other is not None
    waiting = asyncio.create_task(flights.wait(other))
    await asyncio.sleep(0.01)
    with pytest.raises(OSError):
        await flights.land(owner, ENTRY, 60)
    assert await asyncio.wait_for(waiting, 5) is None and len(flights) == 0


async def test_a_wait_ends_with_the_lease_and_a_late_owner_never_releases_the_next() -> None:
    store = MemoryCache(1 << 20)
    flights = LocalFlights(store, 0.2, *BOUNDS)  # the cap bounds the lease too
    first, other = await flights.claim("k", 600.0), await flights.claim("k", 600.0)
    assert first is not None and other is not None and other.wait_s <= 0.2
    started = time.monotonic()
    assert await flights.wait(other) is None  # an owner that never lands: the time up, upstream
    assert 0.15 < time.monotonic() - started < 5  # the 0.2 s cap, not the owner's 600 s
    second = await flights.claim("k", 600.0)  # the lease ran out: taken over
    assert second is not None and second.token not in (None, first.token)
    await flights.land(first, ENTRY, 60)  # late: its answer stored, the second owner's lease stays
    assert await store.get("k") == ENTRY and len(flights) == 1
    waiter = await flights.claim("k", 600.0)
    assert waiter is not None and waiter.token is None
    await flights.land(second, None, 60)
    assert await flights.wait(waiter) == ENTRY and len(flights) == 0  # gone: the entry the first one stored


async def test_a_waiter_cancelled_leaves_the_call_and_the_others_waiting() -> None:
    flights = LocalFlights(MemoryCache(1 << 20), 5.0, *BOUNDS)
    owner, one, two = [await flights.claim("k", 5.0) for _ in range(3)]
    assert owner is not None and one is not None and two is not None
    leaving, staying = asyncio.create_task(flights.wait(one)), asyncio.create_task(flights.wait(two))
    await asyncio.sleep(0.05)
    leaving.cancel()  # its client gone
    await asyncio.sleep(0.05)
    assert leaving.cancelled() and not staying.done()
    await flights.land(owner, ENTRY, 60)
    assert await asyncio.wait_for(staying, 1) == ENTRY


async def test_keys_in_flight_and_waiters_on_one_are_bounded() -> None:
    flights = LocalFlights(MemoryCache(1 << 20), 5.0, 3, 2)
    owners = [await flights.claim(f"k{i}", 5.0) for i in range(3)]
    assert all(o is not None and o.token is not None for o in owners)
    assert await flights.claim("k3", 5.0) is None  # a fourth distinct key: a plain miss, nothing held for it
    assert len(flights) == 3
    waiters = [await flights.claim("k0", 5.0) for _ in range(3)]
    assert [w is not None for w in waiters] == [True, True, False]  # the third goes upstream itself
    tasks = [asyncio.create_task(flights.wait(w)) for w in waiters if w is not None]
    await asyncio.sleep(0)
    for owner in owners:
        assert owner is not None
        await flights.land(owner, None, 60)
    assert await asyncio.gather(*tasks) == [None, None] and len(flights) == 0
    assert (await flights.claim("k0", 5.0)) is not None and len(flights) == 1  # room again


def test_identical_requests_at_once_in_one_process_make_one_upstream_call(tmp_path: Path) -> None:
    question = f"what is the answer? {uuid.uuid4().hex}"
    with replicas(tmp_path, None, Upstream(), count=1) as gw:
        check_identical_burst(gw, question)
        assert gw.ask(0, "a", question)[1] == "hit-exact" and len(gw.upstream.bodies) == 3


def test_an_owner_that_fails_in_one_process_lets_the_others_go_upstream_after_it(tmp_path: Path) -> None:
    question = f"a question that fails first {uuid.uuid4().hex}"
    upstream = Upstream(fail_first=True)  # the first call it gets (the owner's) answers 500, after SLOW_S
    with replicas(tmp_path, None, upstream, count=1) as gw:
        started = time.monotonic()
        answers = burst([partial(gw.ask, 0, "a", question, stream=i == 1) for i in range(5)])
        assert time.monotonic() - started < SLOW_S * 2 + 10  # none waited past the failure (none hung)
        check_failed_first(gw, answers)


def test_a_flood_of_distinct_keys_is_served_as_misses_while_identical_ones_coalesce(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    with replicas(tmp_path, None, Upstream(), count=1) as gw:
        distinct = [partial(gw.ask, 0, "a", f"question {i} {tag}", stream=i % 2 == 0) for i in range(12)]
        same = [partial(gw.ask, 0, "a", f"the same {tag}", stream=i == 0) for i in range(4)]
        answers = burst([*distinct, *same])
        assert [answer[:2] for answer in answers[:12]] == [(200, "miss")] * 12  # no coalescing, no error
        assert all(answer[3] == "the answer" for answer in answers)
        assert sorted(answer[1] for answer in answers[12:]) == ["hit-exact"] * 3 + ["miss"]
        assert len(gw.upstream.bodies) == 12 + 1  # before: 16
        assert all(gw.ask(0, "a", f"question {i} {tag}")[1] == "hit-exact" for i in range(12))  # each stored
        assert len(gw.upstream.bodies) == 13


@pytest.mark.parametrize("stream", [False, True])
def test_an_owner_whose_client_leaves_does_not_strand_the_others(tmp_path: Path, stream: bool) -> None:
    question = f"a client that leaves {uuid.uuid4().hex}"
    with replicas(tmp_path, None, Upstream(), count=1) as gw:
        body = {"model": "up", "temperature": 0, "messages": [{"role": "user", "content": question}], "stream": stream}
        headers = {"authorization": f"Bearer {gw.keys['a']}"}

        def leave() -> None:  # the owner: its client gives up before the answer comes
            with contextlib.suppress(httpx.TimeoutException):
                httpx.post(gw.urls[0] + "/v1/chat/completions", json=body, headers=headers, timeout=SLOW_S * 0.6)
                raise AssertionError("the owner's client was answered before it left")

        def wait_then_ask(stream: bool) -> Any:
            deadline = time.monotonic() + 30  # after the owner took the lease: its call reached the upstream
            while not gw.upstream.arrived and time.monotonic() < deadline:
                time.sleep(0.01)
            return gw.ask(0, "a", question, stream=stream)

        started = time.monotonic()
        _, *answers = burst([leave, *(partial(wait_then_ask, i == 0) for i in range(3))])
        assert time.monotonic() - started < SLOW_S * 2 + 10  # none hung on the owner that left
        assert [(status, text) for status, _, _, text in answers] == [(200, "the answer")] * 3
        upstream = gw.upstream
        if not stream:  # the call went on without its client: its answer stored, the others served from it
            assert [answer[1] for answer in answers] == ["hit-exact"] * 3 and len(upstream.bodies) == 1
            assert all(gw.row(answer[2]).cost_nanousd == 0 for answer in answers)
        else:  # its stream had nowhere to go, so nothing was stored: the others went upstream once it ended
            assert [answer[1] for answer in answers] == ["miss"] * 3 and len(upstream.bodies) == 4
            assert min(upstream.arrived[1:]) > upstream.answered[0]


def test_a_reload_while_an_owner_is_in_flight_keeps_its_waiters(tmp_path: Path) -> None:
    """`POST /admin/reload` (the config file edited: a budget added, the cache's ttl and scope changed) while the
    owner's call is upstream: an identical request after it still waits on that call and is a hit; one upstream
    call. A reload re-reads the governance sections only (the cache section needs a restart), so the request path
    and its table of flights are the process' own from start to end. With the request path rebuilt on reload
    (tried: `Services.reload` composing a new flow) the second request missed and made a second call."""
    question = f"a reload in between {uuid.uuid4().hex}"
    upstream = Upstream(slow_s=3.0)  # room for the reload while the owner's call is upstream
    with replicas(tmp_path, None, upstream, count=1) as gw:
        engine = ledger_db.make_sync_engine(f"sqlite:///{gw.db}")
        admin = keys.create_key(engine, keys.NewKey("ops", is_admin=True))[1]
        engine.dispose()
        config = yaml.safe_load((tmp_path / "margin.yaml").read_text())
        config["cache"] = {"ttl_s": 60, "scope": "key"}  # not applied by a reload: the flight's key stays valid
        config["budgets"] = [{"name": "cap", "scope": {"kind": "team", "value": "z"}, "usd": 100, "period": "day"}]
        (tmp_path / "margin.yaml").write_text(yaml.safe_dump(config))

        def reload_then_ask() -> tuple[Any, float]:
            deadline = time.monotonic() + 30
            while not upstream.arrived and time.monotonic() < deadline:  # the owner's call reached the upstream
                time.sleep(0.01)
            headers = {"authorization": f"Bearer {admin}"}
            answer = httpx.post(gw.urls[0] + "/admin/reload", json={}, headers=headers, timeout=30).json()
            assert (answer["config_file"], answer["rules"]["budgets"]) == (True, 1)
            asked = time.monotonic()
            return gw.ask(0, "a", question), asked

        owner, (waiter, asked) = burst([partial(gw.ask, 0, "a", question), reload_then_ask])
        assert asked < upstream.answered[0]  # it was asked while the owner's call was upstream
        assert (owner[:2], waiter[:2]) == ((200, "miss"), (200, "hit-exact"))
        assert waiter[3] == "the answer" and len(upstream.bodies) == 1
        assert gw.row(waiter[2]).cost_nanousd == 0


def test_the_bounds_are_keys_of_the_cache_section() -> None:
    """`cache.coalesce_max_keys` and `cache.coalesce_max_waiters`: positive ints up to 1,000,000 and 100,000,
    10,000 and 1,000 unset (before, constants of the module: the config refused the keys)."""
    memory = MemoryCache(1 << 20)
    default = Cache(CacheConfig(), memory).flights
    assert isinstance(default, LocalFlights) and (default.max_flights, default.max_waiters) == (10_000, 1_000)
    config = CacheConfig.model_validate({"coalesce_max_keys": 5, "coalesce_max_waiters": 1_000})
    chosen = Cache(config, memory).flights
    assert isinstance(chosen, LocalFlights) and (chosen.max_flights, chosen.max_waiters) == (5, 1_000)
    wrong: list[tuple[str, Any]] = [("coalesce_max_keys", 0), ("coalesce_max_keys", 1_000_001)]
    wrong += [("coalesce_max_waiters", -1), ("coalesce_max_waiters", 100_001), ("coalesce_max_waiters", 2.5)]
    wrong += [("coalesce_max_keys", "many"), ("coalesce_max_keys", None)]
    for key, value in wrong:
        with pytest.raises(ConfigError, match=f"cache.{key}"):
            parse_settings({"cache": {key: value}})
    assert parse_settings({"cache": {"coalesce_max_keys": 1_000_000, "coalesce_max_waiters": 100_000}})


def test_waiters_past_the_configured_bound_go_upstream_themselves(tmp_path: Path) -> None:
    """`cache.coalesce_max_waiters: 1`: of 4 identical requests at once, one calls upstream, one waits for it
    (a hit), the two past the bound each make their own call: 3 calls (with the default bound: 1)."""
    question = f"one waiter at most {uuid.uuid4().hex}"
    with replicas(tmp_path, None, Upstream(), count=1, cache={"coalesce_max_waiters": 1}) as gw:
        answers = burst([partial(gw.ask, 0, "a", question, stream=i == 0) for i in range(4)])
        assert [answer[0] for answer in answers] == [200] * 4 and all(a[3] == "the answer" for a in answers)
        assert sorted(answer[1] for answer in answers) == ["hit-exact"] + ["miss"] * 3
        assert len(gw.upstream.bodies) == 3


async def test_a_waiter_holds_no_stream_place_and_takes_one_back_only_to_go_upstream() -> None:
    """The waiter of a coalesced miss lends its place among its key's streams back while it waits
    (`admission.max_streams_per_key`); its leader storing nothing, it takes one again to call upstream itself,
    or is refused (429) when the key's places are taken meanwhile: the key's upstream calls never pass its cap."""
    cache = Cache(DEFAULTS, MemoryCache(1 << 20))
    assert isinstance(cache.flights, LocalFlights)
    pool, waiting = LocalSlots(1), LocalSlots(1)
    for stored in (True, False):
        slot = StreamSlot(pool, waiting, "k", f"waiter-{stored}")
        assert await slot.retake() and pool.held("k") == 1
        leader = await cache.flights.claim(f"key-{stored}", None)
        lease = await cache.flights.claim(f"key-{stored}", None)
        assert leader is not None and lease is not None and lease.token is None
        task = asyncio.ensure_future(cache._wait(cast(Request, SimpleNamespace(slot=slot)), lease))
        await asyncio.sleep(0.05)
        assert pool.held("k") == 0 and waiting.held("k") == 1  # traded for a waiting place while it waits
        other = StreamSlot(pool, waiting, "k", f"other-{stored}")  # another stream of the key takes the place meanwhile
        assert await other.retake()
        await cache.flights.land(leader, ENTRY if stored else None, 60)
        if stored:  # answered from the entry: no place needed
            assert await asyncio.wait_for(task, 5) == ENTRY and not slot.held and slot.waits
        else:  # upstream itself: the key's one place is the other stream's
            with pytest.raises(RateLimited):
                await asyncio.wait_for(task, 5)
        other.lend()
        slot.lend()  # the stream's end (admit)
        assert pool.held("k") == 0 and waiting.held("k") == 0
    slot = StreamSlot(pool, waiting, "k", "alone")
    assert await slot.retake()
    leader = await cache.flights.claim("key-alone", None)
    lease = await cache.flights.claim("key-alone", None)
    assert leader is not None and lease is not None
    task = asyncio.ensure_future(cache._wait(cast(Request, SimpleNamespace(slot=slot)), lease))
    await asyncio.sleep(0.05)
    await cache.flights.land(leader, None, 60)
    assert await asyncio.wait_for(task, 5) is None and slot.held and pool.held("k") == 1  # its place again
    assert waiting.held("k") == 0  # and no waiting place: it calls upstream now
    slot.lend()


async def test_a_keys_waiting_streams_are_bounded_by_its_stream_cap() -> None:
    """The waiting places are as many as `admission.max_streams_per_key`: with a cap of 1, one stream calls
    upstream and one waits for its answer; a third identical one is refused (429 `too_many_streams`) instead of
    waiting without a place (before, every waiter gave its place back, so a key could hold its cap times
    `cache.coalesce_max_waiters` streams open). Refused, it is no waiter of the flight any more."""
    cache = Cache(DEFAULTS, MemoryCache(1 << 20))
    assert isinstance(cache.flights, LocalFlights)
    pool, waiting = LocalSlots(1), LocalSlots(1)
    leader = await cache.flights.claim("key", None)
    assert leader is not None and leader.token is not None
    slots = [StreamSlot(pool, waiting, "k", f"waiter-{n}") for n in range(2)]
    tasks = []
    for slot in slots:
        assert await slot.retake()  # admit: the one stream place is free again once the one before waits
        lease = await cache.flights.claim("key", None)
        assert lease is not None and lease.token is None
        tasks.append(asyncio.ensure_future(cache._wait(cast(Request, SimpleNamespace(slot=slot)), lease)))
        await asyncio.sleep(0.05)
    assert pool.held("k") == 1 and waiting.held("k") == 1  # the second refused, still in its stream place
    with pytest.raises(RateLimited) as refused:
        await asyncio.wait_for(tasks[1], 5)
    assert refused.value.code == "too_many_streams" and refused.value.headers == {"retry-after": "1"}
    assert slots[1].held and not slots[1].waits  # it kept its stream place, given back at its end (admit)
    slots[1].lend()
    flight = cache.flights._flights["key"]
    assert flight.waiters == 1  # the refused one counts as a waiter no more
    await cache.flights.land(leader, ENTRY, 60)
    assert await asyncio.wait_for(tasks[0], 5) == ENTRY
    slots[0].lend()
    assert pool.held("k") == 0 and waiting.held("k") == 0


async def test_a_waiter_leaves_only_the_flight_it_was_counted_in() -> None:
    """A waiter counted in one flight, which lands while the waiter awaits its waiting place (a Redis round trip
    with a shared counter store) and whose key another request then claims: leaving (refused its place) or
    waiting touches the new flight's count not at all (second review: it went to -1, and `max_waiters` let two
    more waiters in), and the waiter reads the store, as when the key has no flight."""
    flights = LocalFlights(MemoryCache(1 << 20), 5.0, 10, 1)  # one waiter at most
    owner = await flights.claim("k", None)
    waiter = await flights.claim("k", None)
    assert owner is not None and waiter is not None and waiter.token is None
    await flights.land(owner, None, 60)
    second = await flights.claim("k", None)
    assert second is not None and second.token is not None
    flights.leave(waiter)
    assert await flights.wait(waiter) is None  # the first flight's store: nothing stored
    assert await flights.claim("k", None) is not None  # one waiter of the second flight: its bound
    assert await flights.claim("k", None) is None
