"""A budget counter is reconciled from the ledger once, however many requests first use it at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from margin.config import parse_settings
from margin.governance import service
from margin.governance.admission import hold_for
from margin.governance.rules import SHARED, Part
from margin.governance.service import Governance
from margin.governance.store import LocalStore
from margin.specs import BudgetSpec


async def test_concurrent_first_uses_scan_the_ledger_once(monkeypatch: pytest.MonkeyPatch) -> None:
    scans: list[str] = []

    async def slow_ledger_spent(engine: Any, budget: BudgetSpec, now: datetime, part: Part = SHARED) -> int:
        scans.append(budget.name)
        await asyncio.sleep(0.02)
        if len(scans) == 1 and budget.name == "flaky":
            raise RuntimeError("ledger unreachable")
        return 7

    monkeypatch.setattr(service, "ledger_spent", slow_ledger_spent)
    settings = parse_settings(
        {
            "budgets": [
                {"name": "team-a", "scope": {"kind": "team", "value": "a"}, "tokens": 1000},
                {"name": "flaky", "scope": {"kind": "global"}, "tokens": 1000},
            ]
        }
    )
    store = LocalStore()
    governance = Governance(settings, engine=None, store=store)
    now = datetime.now(UTC)
    team, flaky = (hold_for(budget, now, 0, 10) for budget in settings.budgets)

    await asyncio.gather(*(governance.seed([team], now) for _ in range(25)))
    assert scans == ["team-a"]
    assert (await store.counters([team.hold.counter]))[team.hold.counter] == (7, 0)
    await governance.seed([team], now)
    assert scans == ["team-a"]  # seeded: never scanned again

    scans.clear()
    results = await asyncio.gather(*(governance.seed([flaky], now) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)  # one failed scan, shared by its waiters
    assert scans == ["flaky"]
    await governance.seed([flaky], now)  # the next request tries again
    assert scans == ["flaky", "flaky"]
    assert (await store.counters([flaky.hold.counter]))[flaky.hold.counter] == (7, 0)
