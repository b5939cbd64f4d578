"""`margin.pipeline.topup` over a stand-in for `Governance.resize` (the stores' own `extend`:
tests/governance/test_store_extend.py): which changes reach the store, and what a lost reply leaves."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from margin.errors import Overloaded
from margin.governance.admission import Admission, hold_for
from margin.pipeline.topup import give_back, take_back, top_up
from margin.pipeline.values import Record, Request
from margin.protocol import Endpoint
from margin.specs import BudgetSpec
from margin.types import ANONYMOUS

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def budget(mode: str) -> BudgetSpec:
    return BudgetSpec.model_validate(
        {"name": mode, "scope": {"kind": "global"}, "usd": "1", "period": "day", "mode": mode}
    )


class Store:
    """Governance's `resize` as the store runs it: each call recorded; `lose` replies lost after it ran."""

    def __init__(self, lose: int = 0) -> None:
        self.calls: list[list[int]] = []
        self.lose = lose

    async def resize(self, admission: Admission, amounts: Sequence[int], now: datetime | None = None) -> None:
        self.calls.append(list(amounts))
        if self.lose:
            self.lose -= 1
            raise Overloaded("the budget and rate-limit store is unavailable", code="governance_unavailable")


def request(*modes: str, billed: str | None = None) -> Request:
    record = Record("r1", Endpoint.CHAT, "m", False, principal=ANONYMOUS)
    record.admission = Admission("r1", [hold_for(budget(mode), NOW, 500, 0) for mode in modes])
    if billed is not None:
        record.earlier_charge = SimpleNamespace(cost_usd=Decimal(billed))  # type: ignore[assignment]
    return Request("r1", Endpoint.CHAT, {}, {}, None, ANONYMOUS, None, record, 0.0)  # type: ignore[arg-type]


def governance(store: Store) -> Any:
    return store


async def test_a_top_up_of_soft_budgets_only_makes_no_round_trip() -> None:
    """Soft budgets may settle past their reservation: a billed failure adds no store round trip (a Redis blip
    there made a fallback that would have answered a 503)."""
    store = Store(lose=1)
    assert await top_up(governance(store), request("soft", billed="0.000001"), 0) == 1000
    assert store.calls == []


async def test_a_top_up_sets_every_usd_hold_when_a_hard_one_applies() -> None:
    store = Store()
    assert await top_up(governance(store), request("soft", "hard", billed="0.000001"), 0) == 1000
    assert store.calls == [[1500, 1500]]  # what each is to hold: a call made again changes nothing more


async def test_a_give_back_whose_reply_is_lost_is_taken_back_before_upstream() -> None:
    """The store may have given the reservation back though its reply was lost: it counts as given back, so the
    waiter that calls upstream sets it again (before, it kept nothing and called upstream holding nothing)."""
    store = Store(lose=1)
    asked = request("hard")
    given = await give_back(governance(store), asked)
    assert given == (500,)
    await take_back(governance(store), asked, given)
    assert store.calls == [[0], [500]]


async def test_a_take_back_the_store_does_not_answer_calls_nothing() -> None:
    store = Store(lose=2)
    asked = request("hard")
    given = await give_back(governance(store), asked)
    with pytest.raises(Overloaded):
        await take_back(governance(store), asked, given)
