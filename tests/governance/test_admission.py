"""Budgets and rate limits through the gateway (fake backends, in-process): every rejection path, and
that reservations are settled whatever happens to the request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from margin.economics.money import to_nanousd
from margin.governance import admission as adm
from margin.governance.rules import Part
from margin.specs import BudgetSpec, Scope
from tests.governance.conftest import bearer, make_key
from tests.helpers import fake_settings, gateway, reserved_input

CHAT = "/v1/chat/completions"
PRICE = {"input": "0", "output": "2500", "version": "t"}  # $0.0025 per output token


def body(max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    return {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, **extra}


def settings(db_path: Path, **overrides: Any) -> Any:
    models = {"priced": {"backend": "api", "price": PRICE}, "fake-chat": {"backend": "fake"}}
    return fake_settings(db_path, models=models, **overrides)


async def test_budget_rejects_with_name_and_reset(db_path: Path) -> None:
    _, key = make_key(db_path, name="k", team="search")
    budget = {"name": "search-daily", "scope": {"kind": "team", "value": "search"}, "usd": "0.02", "period": "day"}
    async with gateway(settings(db_path, budgets=[budget])) as gw:
        ok = [await gw.http.post(CHAT, json=body(), headers=bearer(key)) for _ in range(2)]
        assert [r.status_code for r in ok] == [200, 200]  # 2 × $0.01 = the whole budget
        over = await gw.http.post(CHAT, json=body(), headers=bearer(key))
        assert over.status_code == 429
        error = over.json()["error"]
        assert error["code"] == "budget_exceeded" and error["type"] == "rate_limit_error"
        assert "search-daily" in error["message"] and "resets at" in error["message"]
        assert 0 < int(over.headers["retry-after"]) <= 86_400
        rows = await gw.rows()
        assert [r.status for r in rows] == ["ok", "ok", "error"]
        assert rows[-1].error_code == "budget_exceeded" and rows[-1].cost_nanousd == 0
        await gw.services.drain()
        counters = await gw.services.governance.store.counters(_counter_names(gw))
        assert list(counters.values()) == [(to_nanousd(Decimal("0.02")), 0)]


def _counter_names(gw: Any) -> list[str]:
    from datetime import UTC, datetime

    from margin.governance.admission import counter_name, window

    now = datetime.now(UTC)
    return [counter_name(b, window(b.period, now)[0]) for b in gw.services.governance.rules.budgets]


async def test_reservation_uses_worst_case_then_settles_actual(db_path: Path) -> None:
    budget = {"name": "g", "scope": {"kind": "global"}, "usd": "0.05", "period": "lifetime"}
    async with gateway(settings(db_path, budgets=[budget])) as gw:
        # max_tokens 30 → worst case $0.075 > $0.05: refused although the answer would cost $0.01
        refused = await gw.http.post(CHAT, json=body(max_tokens=30))
        assert refused.status_code == 429 and "may cost up to $0.075" in refused.json()["error"]["message"]
        ok = await gw.http.post(CHAT, json=body(max_tokens=10))  # reserves $0.025, settles $0.01 (4 tokens)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4
        await gw.services.drain()
        counters = await gw.services.governance.store.counters(_counter_names(gw))
        assert list(counters.values()) == [(to_nanousd(Decimal("0.01")), 0)]


async def test_failed_and_streamed_requests_settle(db_path: Path) -> None:
    budget = {"name": "g", "scope": {"kind": "global"}, "usd": "1", "period": "month"}
    backends = {"api": {"kind": "fake", "output_tokens": 4}, "down": {"kind": "fake", "fail_status": 502}}
    models = {"priced": {"backend": "api", "price": PRICE}, "broken": {"backend": "down", "price": PRICE}}
    config = fake_settings(db_path, budgets=[budget], backends=backends, models=models)
    async with gateway(config) as gw:
        failed = await gw.http.post(CHAT, json={**body(), "model": "broken"})
        assert failed.status_code == 502
        async with gw.http.stream("POST", CHAT, json=body(stream=True)) as stream:
            assert stream.status_code == 200
            text = "".join([part async for part in stream.aiter_text()])
        assert "[DONE]" in text
        rows = await gw.rows()
        store = gw.services.governance.store
        assert await store.pending() == 0
        spent = sum(r.cost_nanousd or 0 for r in rows)
        assert list((await store.counters(_counter_names(gw))).values()) == [(spent, 0)]
        assert spent == to_nanousd(Decimal("0.01"))


async def test_token_budget_and_soft_warning(db_path: Path) -> None:
    reserve = reserved_input(body()) + 4  # the request's JSON bytes + max_tokens; it settles 1 + 4
    budgets = [
        {"name": "tok", "scope": {"kind": "model", "value": "priced"}, "tokens": reserve + 17, "period": "hour"},
        {"name": "soft", "scope": {"kind": "global"}, "usd": "0.015", "mode": "soft", "alert_pct": 50},
    ]
    async with gateway(settings(db_path, budgets=budgets)) as gw:
        first = await gw.http.post(CHAT, json=body())
        assert first.status_code == 200
        assert first.headers["x-margin-budget-warning"].startswith("soft=")
        second = await gw.http.post(CHAT, json=body())  # soft budget now over 100%: still allowed
        assert second.status_code == 200
        for _ in range(2):
            await gw.http.post(CHAT, json=body())
        # spent 20 tokens; another reservation would pass the budget by 3
        over = await gw.http.post(CHAT, json=body())
        assert over.status_code == 429 and "`tok`" in over.json()["error"]["message"]
        # another model is not under the model budget
        other = await gw.http.post(CHAT, json={**body(), "model": "fake-chat"})
        assert other.status_code == 200


async def test_rpm_limit_answers_429_with_retry_after(db_path: Path) -> None:
    key_id, key = make_key(db_path, name="k", team="t")
    limits = [{"scope": {"kind": "key", "value": key_id}, "rpm": 2}]
    async with gateway(settings(db_path, limits=limits)) as gw:
        codes = [(await gw.http.post(CHAT, json=body(), headers=bearer(key))).status_code for _ in range(2)]
        third = await gw.http.post(CHAT, json=body(), headers=bearer(key))
        assert codes == [200, 200] and third.status_code == 429
        assert third.json()["error"]["code"] == "rate_limit_exceeded"
        assert 25 <= int(third.headers["retry-after"]) <= 31
        assert (await gw.rows())[-1].error_code == "rate_limit_exceeded"


async def test_tpm_limit_counts_answers_after_the_fact(db_path: Path) -> None:
    limits = [{"scope": {"kind": "team", "value": "t"}, "tpm": 20}]
    _, key = make_key(db_path, name="k", team="t")
    async with gateway(settings(db_path, limits=limits)) as gw:
        statuses = [(await gw.http.post(CHAT, json=body(), headers=bearer(key))).status_code for _ in range(4)]
        # each request: 9 prompt tokens admitted, 4 answer tokens charged after → the 3rd finds the bucket in debt
        assert statuses[:2] == [200, 200] and statuses[-1] == 429


@pytest.mark.parametrize("unknown_price", ["reject", "allow"])
async def test_unknown_price_under_hard_usd_budget(db_path: Path, unknown_price: str) -> None:
    budget = {"name": "g", "scope": {"kind": "global"}, "usd": "5"}
    models = {"mystery": {"backend": "api"}}
    config = fake_settings(db_path, budgets=[budget], models=models, admission={"unknown_price": unknown_price})
    async with gateway(config) as gw:
        response = await gw.http.post(CHAT, json={**body(), "model": "mystery"})
        if unknown_price == "reject":
            assert response.status_code == 403 and response.json()["error"]["code"] == "price_unknown"
        else:
            assert response.status_code == 200
            assert (await gw.rows())[-1].cost_nanousd is None


def test_windows_hold_is_hold_for() -> None:
    """The request path's per-hour cache of windows makes the same holds as `hold_for`, across hour, day,
    month and year boundaries, for shared and per-org counters, USD and token budgets."""
    budgets = [
        BudgetSpec(name=f"b-{period}", scope=Scope(kind="team", value="t"), usd=5, period=period)
        for period in ("hour", "day", "month", "lifetime")
    ] + [BudgetSpec(name="tok", scope=Scope(kind="global"), tokens=100, period="day", mode="soft")]
    windows = adm.Windows()
    start = datetime(2026, 12, 31, 22, 59, 59, 999_000, tzinfo=UTC)
    moments = [start + timedelta(seconds=s) for s in (0, 0.0005, 0.001, 1, 3599, 3600, 3601, 7200)]
    moments.append(datetime(2027, 1, 1, 3, 30, tzinfo=timezone(timedelta(hours=5))))  # not UTC
    for now in moments:
        for budget in budgets:
            for part in (Part(), Part("acme"), Part("acme", "u_1"), Part(None, "x")):
                assert windows.hold(budget, now, 123, 45, part) == adm.hold_for(budget, now, 123, 45, part)
