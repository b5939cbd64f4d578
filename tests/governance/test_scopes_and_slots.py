"""Rules callers cannot dodge, unit by unit: tags rules see (bound to the key), per-org counters and
buckets, the ledger reconciliation matching admission, stream slots, and settling to what served."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from margin.governance import admission as adm
from margin.governance.rules import Part, Subject, governed_tags, matches, partition
from margin.governance.service import Governance, ledger_spent
from margin.governance.slots import LocalSlots, SharedSlots
from margin.governance.store import LocalStore
from margin.ledger import db
from margin.specs import BudgetSpec, LimitSpec, Scope
from tests.governance.conftest import make_key
from tests.helpers import fake_settings
from tests.ledger.rows import row, write_rows


def test_rules_see_only_tags_bound_to_the_key() -> None:
    header = {"customer": "acme", "feature": "search"}
    assert governed_tags(header, {}, keyed=True) == {}
    assert governed_tags(header, {"customer": "acme"}, keyed=True) == {"customer": "acme"}
    assert governed_tags(header, {"customer": "*"}, keyed=True) == {"customer": "acme"}
    assert governed_tags(header, {}, keyed=False) == header  # open mode: one local user


def test_team_and_tag_scopes_are_counted_per_org() -> None:
    team = Scope(kind="team", value="support")
    acme, globex, lone = (Subject(team="support", org=org) for org in ("acme", "globex", None))
    assert team.per_org and matches(team, acme) and matches(team, globex)
    parts = (partition(team, acme), partition(team, globex), partition(team, lone))
    assert parts == (Part("acme"), Part("globex"), Part())
    budget = BudgetSpec(name="support", scope=team, tokens=10, period="lifetime")
    names = {adm.counter_name(budget, None, partition(team, s)) for s in (acme, globex, lone)}
    basis = adm.counter_name(budget, None).split("~")[1]
    assert names == {f"support#acme~{basis}", f"support#globex~{basis}", f"support~{basis}"}
    limit = LimitSpec(scope=team, rpm=1)
    assert adm.limit_key(limit, acme) != adm.limit_key(limit, globex)
    only_acme = Scope(kind="team", value="support", org="acme")
    assert not only_acme.per_org and matches(only_acme, acme) and not matches(only_acme, globex)
    assert only_acme.label() == "team=support,org=acme"
    assert not Scope(kind="model", value="m").per_org  # an operator's cap on a model is shared
    with pytest.raises(ValidationError):
        Scope(kind="model", value="m", org="acme")


async def test_reconciliation_counts_what_admission_counted(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    bound_id, _ = make_key(path, name="bound", team="support", org="acme", tags={"customer": "acme"})
    other_id, _ = make_key(path, name="other", team="support", org="globex")
    url = f"sqlite:///{path}"
    rows = [
        row("1", key_id=bound_id, team="support", org="acme", tags={"customer": "acme"}),
        row("2", key_id=other_id, team="support", org="globex", tags={"customer": "acme"}),  # a label
    ]
    await write_rows(url, rows)
    engine = db.make_async_engine(url)
    now = datetime.now(UTC)
    tag = BudgetSpec(name="c", scope=Scope(kind="tag", value="customer=acme"), tokens=100, period="day")
    team = BudgetSpec(name="t", scope=Scope(kind="team", value="support"), tokens=100, period="day")
    try:
        assert await ledger_spent(engine, tag, now, Part("acme")) == 3  # only the key bound to customer=acme
        assert await ledger_spent(engine, team, now, Part("acme")) == 3  # one org's team
        assert await ledger_spent(engine, team, now, Part("globex")) == 3
        assert await ledger_spent(engine, team, now, Part()) == 0  # no org: none of theirs
    finally:
        await engine.dispose()


async def test_stream_slots_cap_each_key() -> None:
    slots = LocalSlots(cap=2)
    assert await slots.acquire("k", "r1") and await slots.acquire("k", "r2") and not await slots.acquire("k", "r3")
    assert await slots.acquire("other", "r4")
    slots.release("k", "r1")
    assert slots.held("k") == 1 and await slots.acquire("k", "r5")
    unlimited = LocalSlots(cap=None)
    assert all([await unlimited.acquire("k", f"r{i}") for i in range(1000)])


async def test_shared_stream_slots_count_every_process_and_expire(redis_url: str) -> None:
    """Two processes' slots over one Redis (two SharedSlots): one count per key; a lease nobody renews
    (its process was killed) expires; a renewed one does not."""
    from margin.governance.redis_store import RedisStore

    store = RedisStore(redis_url)
    key = f"k-{uuid.uuid4().hex[:8]}"
    first, second = SharedSlots(2, store), SharedSlots(2, store)
    try:
        assert await first.acquire(key, "a") and await second.acquire(key, "b")
        assert not await first.acquire(key, "c") and not await second.acquire(key, "c")
        second.release(key, "b")
        await second.close()  # the release has reached Redis
        assert await first.acquire(key, "c") and not await second.acquire(key, "d")
        assert await store.take_slot(key, "a", 2, 30.0)  # a lease already held is no second slot
        assert not await store.take_slot(f"{key}-x", "z", 0, 30.0)
        # a lease of 1 s: the next call must come within it (a 0.3 s one lost to a stall on a loaded box)
        assert await store.take_slot(f"{key}-dead", "z", 1, 1.0)  # a killed process's lease ...
        assert not await store.take_slot(f"{key}-dead", "y", 1, 1.0)
        assert await store.take_slot(f"{key}-live", "y", 1, 1.0)
        await store.renew_slots([(f"{key}-live", "y")], 30.0)
        await asyncio.sleep(1.3)  # past both 1 s leases (a stall only lengthens it)
        assert await store.take_slot(f"{key}-dead", "y", 1, 1.0)  # ... expires
        assert not await store.take_slot(f"{key}-live", "w", 1, 30.0)  # a renewed one holds
    finally:
        await first.close()
        await store.close()


async def test_waiting_streams_have_a_shared_bound_of_their_own(tmp_path: Path, redis_url: str) -> None:
    """With Redis, the places of a key's streams that only wait for an identical request's answer (a coalesced
    cache miss) are counted across processes too, as many as `admission.max_streams_per_key`: with a cap of 1,
    a waiter on one process lets the other take the key's stream place, and the other's own waiter is refused.
    Before, a waiter held no place at all: a key could hold its cap times `cache.coalesce_max_waiters`."""
    from margin.governance.redis_store import RedisStore
    from margin.pipeline.values import StreamSlot

    settings = fake_settings(tmp_path / "l.db", admission={"max_streams_per_key": 1})
    stores = [RedisStore(redis_url), RedisStore(redis_url)]
    one, two = (Governance(settings, None, store) for store in stores)  # two processes: no ledger read here
    assert isinstance(one.stream_waiters, SharedSlots) and one.stream_waiters.cap == 1
    key = f"k-{uuid.uuid4().hex[:8]}"
    first = StreamSlot(one.streams, one.stream_waiters, key, "r1")
    second = StreamSlot(two.streams, two.stream_waiters, key, "r2")
    try:
        assert await first.retake() and not await second.retake()  # the cap: one stream place
        assert await first.wait()  # waits: its stream place traded for the waiting one
        await one.streams.close()  # the release has reached Redis
        assert await second.retake() and not await second.wait()  # the waiting place is taken: refused
        assert second.held and not second.waits
        assert not await first.retake()  # upstream itself: the stream place is the other's
        second.lend()
        await two.streams.close()
        assert await first.retake() and not first.waits  # its waiting place given back once it holds one
    finally:
        first.lend()
        second.lend()
        for governance in (one, two):
            for pool in (governance.streams, governance.stream_waiters):
                await pool.close()
        for store in stores:
            await store.close()


async def test_stream_slots_a_redis_restart_lost_are_added_back_while_their_streams_are_open(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis restarted without its data has no lease of the streams still open: renewal only extended leases
    it found, so the key could open its cap's worth of streams again on top of them (twice the cap). Now the
    renewal adds back the leases of streams still open; a stream that ended is not added back."""
    from redis import asyncio as aioredis

    from margin.governance.redis_scripts import P
    from margin.governance.redis_store import RedisStore

    monkeypatch.setattr("margin.governance.slots.RENEW_S", 0.05)
    store = RedisStore(redis_url)
    key = f"k-{uuid.uuid4().hex[:8]}"
    slots = SharedSlots(2, store)
    raw = aioredis.from_url(redis_url, decode_responses=True)
    try:
        assert await slots.acquire(key, "a") and await slots.acquire(key, "b")
        slots.start()
        await raw.delete(f"{P}st:{key}")  # what a restart without persistence does to the key's leases
        slots.release(key, "b")  # this stream ends meanwhile
        await asyncio.sleep(0.5)  # renewal passes
        members = {str(member) for member in await raw.zrange(f"{P}st:{key}", 0, -1)}
        assert members == {"a"}  # the open stream's lease is back, the ended one's is not
        assert await slots.acquire(key, "c")
        assert not await slots.acquire(key, "d")  # was admitted: three streams open against a cap of 2
    finally:
        await slots.close()
        await raw.aclose()
        await store.close()


async def test_settling_charges_only_budgets_of_the_model_that_served(tmp_path: Path) -> None:
    budgets = [
        {"name": "fb", "scope": {"kind": "model", "value": "fallback"}, "tokens": 100, "period": "lifetime"},
        {"name": "all", "scope": {"kind": "global"}, "tokens": 100, "period": "lifetime"},
    ]
    settings = fake_settings(tmp_path / "x.db", budgets=budgets)
    store = LocalStore()
    governance = Governance(settings, engine=None, store=store)
    now = datetime.now(UTC)
    holds = [adm.hold_for(budget, now, 0, 50) for budget in governance.rules.budgets]
    assert (await store.admit("r", [h.hold for h in holds], 60)).ok
    caller = Subject("k", "t")
    admission = adm.Admission("r", holds, [], caller)
    await governance.settle(admission, None, 3, 4, caller.serving("primary", "fake"))
    fb, everyone = (item.hold.counter for item in holds)
    assert await store.counters([fb, everyone]) == {fb: (0, 0), everyone: (7, 0)}
