"""Budgets reserve the worst case before a call and settle to the actual cost after it: the report must count
what the ledger's rows say was spent (settled cost, cache hits at 0, failures at 0), never a reservation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from margin.governance.admission import counter_name, window
from margin.ledger import db
from margin.report.metrics import savings
from margin.report.queries import Window, summarize
from tests.helpers import fake_settings, gateway, polls

CHAT = "/v1/chat/completions"
PRICE = {"input": "0", "output": "1000", "version": "t"}  # $0.001 per output token
BUDGET = {"name": "g", "scope": {"kind": "global"}, "usd": "1.00", "period": "month"}


def _body(model: str, text: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 40, "temperature": 0}


async def test_report_counts_settled_cost_not_reservations(db_path: Path) -> None:
    settings = fake_settings(
        db_path,
        backends={"api": {"kind": "fake", "output_tokens": 5}, "down": {"kind": "fake", "fail_status": 502}},
        models={"m": {"backend": "api", "price": PRICE}, "broken": {"backend": "down", "price": PRICE}},
        budgets=[BUDGET],
    )
    async with gateway(settings) as gw:
        statuses = [
            (await gw.http.post(CHAT, json=_body("m", text))).status_code for text in ("one", "two", "one")
        ]  # the second "one" is answered from the cache
        statuses.append((await gw.http.post(CHAT, json=_body("broken", "three"))).status_code)
        assert statuses == [200, 200, 200, 502]
        rows = await gw.rows()
        store = gw.services.governance.store
        for _ in polls():
            if await store.pending() == 0:
                break
            await asyncio.sleep(0.02)
        budget = gw.services.governance.rules.budgets[0]
        name = counter_name(budget, window(budget.period, datetime.now(UTC))[0])
        spent, reserved = (await store.counters([name]))[name]
    assert sorted(r.kind for r in rows) == ["cache_hit", "request", "request", "request"]
    engine = db.make_sync_engine(settings.storage.ledger)
    totals = summarize(engine, Window())["totals"]
    found = savings(engine, Window())
    engine.dispose()
    # each call reserved 40 tokens × $0.001 = $0.040; each answered one was settled to 5 tokens = $0.005
    assert Decimal(totals["cost_usd"]) == Decimal("0.010")
    assert spent == 10_000_000 and reserved == 0  # the budget agrees with the ledger; nothing stays reserved
    assert totals["requests"] == 4 and totals["errors"] == 1 and totals["cache_hits"] == 1
    assert found.cache_saved_usd == Decimal("0.005") and found.counterfactual_cost_usd == Decimal("0.015")
