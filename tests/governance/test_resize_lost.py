"""`Governance.resize` (a fallback's top-up, a coalesced waiter's reservation taken back) over a Redis that lost a
budget counter, or after the reservation ended: the counter is reconciled from the ledger again and the change
checked against it, as admission does; a reservation no longer open is a 503, not a budget with no room."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redis import asyncio as aioredis

from margin.errors import Overloaded
from margin.governance import admission as adm
from margin.governance.redis_scripts import P
from margin.governance.redis_store import RedisStore
from margin.governance.service import Governance
from tests.helpers import fake_settings
from tests.ledger.rows import row, write_rows

HARD = {"name": "all", "scope": {"kind": "global"}, "tokens": 20, "period": "day"}  # rows: 3 tokens each


@pytest.fixture
async def governance(tmp_path: Path, redis_url: str, engine: Any) -> AsyncIterator[Governance]:
    client = aioredis.from_url(redis_url)
    await client.flushdb()
    await client.aclose()
    made = Governance(fake_settings(tmp_path / "l.db", budgets=[HARD]), engine, RedisStore(redis_url))
    yield made
    await made.close()


async def test_a_lost_counter_is_reconciled_and_the_top_up_checked_against_it(
    tmp_path: Path, governance: Governance
) -> None:
    """A reservation given back to 0 (a coalesced waiter) and taken again after its counter was lost: checked in
    full against the counter rebuilt from the ledger."""
    store, now = governance.store, datetime.now(UTC)
    holds = [adm.hold_for(budget, now, 0, 5) for budget in governance.rules.budgets]
    await governance.seed(holds, now)
    assert (await store.admit("r1", [item.hold for item in holds], 60)).ok
    admission = adm.Admission("r1", holds)
    assert await governance.resize(admission, [0], now) is None  # given back while it waits
    counter = holds[0].hold.counter
    await write_rows(f"sqlite:///{tmp_path / 'l.db'}", [row(f"done{i}") for i in range(4)])  # 12 tokens
    await store.client.delete(f"{P}c:{counter}")  # type: ignore[attr-defined]
    assert await governance.resize(admission, [8], now) is None  # was: refused, "spent 0, reserved 0"
    assert admission.holds[0].hold.amount == 8
    assert await store.counters([counter]) == {counter: (12, 8)}  # the ledger's 12, not 0
    refused = await governance.resize(admission, [9], now)  # 12 + 9 > 20
    assert refused is not None and refused[1] == (12, 8) and admission.holds[0].hold.amount == 8
    await governance.settle(admission, 0, 1, 2)
    with pytest.raises(Overloaded, match="no longer open") as gone:
        await governance.resize(admission, [8], now)
    assert gone.value.code == "governance_unavailable"


async def test_a_hold_grown_on_a_rebuilt_counter_is_refused_not_checked_for_its_increase_alone(
    tmp_path: Path, governance: Governance
) -> None:
    """The counter rebuilt from the ledger no longer counts r1's hold of 5, while r2's 6 is on it again: growing r1's
    hold to 10 was checked for its 5 more alone (12 + 6 + 5 <= 20) and took r1's old 5 off r2's, so 12 + 6 + 10 = 28
    of 20 could be spent. It is a 503 now, and nothing changes."""
    store, now = governance.store, datetime.now(UTC)
    holds = [adm.hold_for(budget, now, 0, 5) for budget in governance.rules.budgets]
    await governance.seed(holds, now)
    assert (await store.admit("r1", [item.hold for item in holds], 60)).ok
    counter = holds[0].hold.counter
    await write_rows(f"sqlite:///{tmp_path / 'l.db'}", [row(f"done{i}") for i in range(4)])  # 12 tokens
    await store.client.delete(f"{P}c:{counter}")  # type: ignore[attr-defined]
    await governance.reseed(holds, now)
    r2 = [dataclasses.replace(item.hold, amount=6) for item in holds]
    assert (await store.admit("r2", r2, 60)).ok
    assert await store.counters([counter]) == {counter: (12, 6)}
    await store.client.delete(f"{P}c:{counter}")  # type: ignore[attr-defined]  # lost again before r1 grows
    admission = adm.Admission("r1", holds)
    with pytest.raises(Overloaded, match="rebuilt from the ledger"):
        await governance.resize(admission, [10], now)
    assert admission.holds[0].hold.amount == 5
