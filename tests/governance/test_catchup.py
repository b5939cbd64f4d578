"""The follow-up raises of rebuilt budget counters (margin.governance.catchup), without a store: when they run,
deduplicated, capped, a failure tried again at the next due time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime

from margin.governance import admission as adm
from margin.governance.catchup import CatchUp, delays_for
from margin.specs import BudgetSpec


def _item(name: str) -> adm.BudgetHold:
    budget = BudgetSpec.model_validate({"name": name, "scope": {"kind": "global"}, "tokens": 10, "period": "day"})
    return adm.hold_for(budget, datetime.now(UTC), 0, 1)


async def _until_idle(catchup: CatchUp, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not len(catchup):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def test_the_delays_follow_the_flush_interval() -> None:
    assert delays_for(1000) == (2.5, 7.5, 32.5)
    assert delays_for(10) == (0.52, 5.52, 30.52)


async def test_each_due_follow_up_runs_once_per_delay_and_a_failure_is_tried_again() -> None:
    catchup = CatchUp((0.05, 0.1, 0.15))
    calls: list[str] = []

    async def raise_one(item: adm.BudgetHold) -> bool:
        calls.append(item.hold.counter)
        if len(calls) == 1:
            raise OSError("ledger unreachable")
        return False

    task = asyncio.get_running_loop().create_task(catchup.run(raise_one))
    try:
        item = _item("a")
        catchup.schedule(item)
        catchup.schedule(item)  # the same counter: one entry
        assert len(catchup) == 1
        await _until_idle(catchup)
        assert calls == [item.hold.counter] * 3  # the failed first try did not stop the next two
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_pending_follow_ups_are_capped() -> None:
    catchup = CatchUp((60.0,), cap=2)
    for name in ("a", "b", "c"):
        catchup.schedule(_item(name))
    assert len(catchup) == 2
    catchup.schedule(_item("a"))  # already pending: scheduled again, not refused
    assert len(catchup) == 2
