"""A slow self-hosted backend cannot spend past a hard budget, through a running `margin serve` over real HTTP:
a backend priced by busy time (TCO) is charged the time it measured, so a hard budget reserves a busy-time
allowance and the call is cut there (the in-process tests: tests/governance/test_busy_time_allowance.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.security.conftest import FAKE_CONFIG, ServeFactory
from tests.security.waiting import wait_for

CHAT = "/v1/chat/completions"
REQUESTS = 12
LIMIT_NANOUSD = 1_000_000  # $0.001: ~1 s of the backend below ($3.60/h and its energy)
# 0.6 s to the first token, then 10 tokens/s: ~1.5 s an answer; its configured throughput (1,000 tokens/s) made the
# old reservation ~0.1 s of busy time, and the reviewer's script saw 15× the limit spent on a 1.5 s first token
SLOW = {
    **FAKE_CONFIG["backends"]["fake"],
    "ttft_ms": 600,
    "tokens_per_s": 10,
    "hardware": {"usd_per_hour": "3.60", "watts_busy": 100, "tokens_per_s": 1000},
}


async def _ask_all(url: str) -> list[httpx.Response]:
    body = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(*(client.post(CHAT, json={**body, "stream": i % 2 == 1}) for i in range(REQUESTS)))


def test_concurrent_requests_on_a_slow_tco_backend_stay_within_a_hard_budget(served: ServeFactory) -> None:
    budget = {"name": "g", "scope": {"kind": "global"}, "usd": "0.001", "period": "lifetime"}
    overrides: dict[str, Any] = {
        "backends": {"fake": SLOW},
        "budgets": [budget],
        "admission": {"hard_busy_reserve_s": 0.2},
    }
    with served(overrides) as gw:
        replies = asyncio.run(_ask_all(gw.url))
        wait_for(lambda: len(gw.rows()) == REQUESTS, "every request's ledger row")
        rows = gw.rows()
    assert sum(r.cost_nanousd or 0 for r in rows) <= LIMIT_NANOUSD
    codes = sorted({(r.status_code, r.json()["error"]["code"]) for r in replies})
    assert codes == [(429, "budget_exceeded"), (504, "budget_time_allowance")]  # cut before its first token
    cut = [r for r in rows if r.error_code == "budget_time_allowance"]
    assert cut and all((r.status, r.http_status) == ("upstream_timeout", 504) and r.busy_ms <= 200 for r in cut)
