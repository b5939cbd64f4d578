"""A fallback after a billed failure never spends past a hard budget, through a real `margin serve` in front of
the fault upstream, with the counters in process and in Redis, whole answers and streams.

The first target answers 200 with an error object and the usage it billed beside it (70 tokens: 70,000 nano-USD
at $1 per million; a stream: 500 after it was sent, billed its counted prompt), the fallback answers with usage
of 10^9 tokens each way (held at the request's ceiling: the most the reservation priced for one attempt). The
hard budget has room for one attempt's worst case and less than what the failure was billed. Before, the
fallback was tried and both settled: the budget spent past its limit. Now the reservation is topped up by the
billed failure before the fallback, there is no room, and the client is answered the budget error (429) with a
row that says what the failed attempt was billed; the budget holds exactly that."""

from __future__ import annotations

from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.faults.conftest import FaultUpstream
from tests.security.conftest import Served, serving_in
from tests.security.waiting import wait_for

CHAT = "/v1/chat/completions"
PRICE = {"input": "1", "output": "1"}  # $1 per million tokens each way: 1,000 nano-USD a token
BILLED = 70 * 1000  # nano-USD: the 40 + 30 tokens the failing upstream says it billed beside its error
MAX_TOKENS = 100
PROMPT = "hello " * 100  # a stream's failed attempt is billed its prompt, counted: ~150 tokens (150,000 nano-USD)
FAILING = {False: "errorbody,usage=40:30", True: "status,code=500"}  # what the first target does, by `stream`
ROOM = 35 * 1000  # what each hard budget has past one attempt's worst case: less than BILLED


def body(stream: bool) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS, "stream": stream}


def worst(stream: bool) -> int:
    """One attempt's worst case (nano-USD): the input bound (the request's JSON bytes, more than its estimate)
    and `max_tokens`, at $1 per million each way."""
    return (len(orjson.dumps(body(stream))) + MAX_TOKENS) * 1000


def config(fault_upstream: FaultUpstream, tag: str, storage: dict[str, Any]) -> dict[str, Any]:
    budget = [
        {"name": f"{tag}-{team}", "scope": {"kind": "team", "value": team}, "usd": str(usd), "period": "day"}
        for team, usd in (
            ("whole", Decimal(worst(False) + ROOM) / 10**9),
            ("stream", Decimal(worst(True) + ROOM) / 10**9),
            ("probe", 100),
        )
    ]
    return {
        "backends": {
            "bad": {"kind": "openai", "base_url": fault_upstream.base("dyn", tag), "retries": {"attempts": 0}},
            "good": {"kind": "openai", "base_url": fault_upstream.base("inflated", tag)},
        },
        "models": {
            "m": {"backend": "bad", "price": PRICE, "fallbacks": ["good"]},
            "good": {"backend": "good", "price": PRICE},
        },
        "budgets": budget,
        "storage": {"flush_interval_ms": 10, **storage},
    }


def row_of(gw: Served, response: httpx.Response) -> Any:
    request_id = response.headers["x-margin-request-id"]
    wait_for(lambda: any(row.request_id == request_id for row in gw.rows()), "the request's ledger row")
    return next(row for row in gw.rows() if row.request_id == request_id)


def budgets(gw: Served) -> dict[str, dict[str, str]]:
    with gw.client(gw.keys["admin"]) as admin:
        return {item["name"]: dict(item) for item in admin.get("/admin/budgets").json()["data"]}


def settled(gw: Served, name: str) -> bool:
    return budgets(gw)[name]["reserved"] == "0.000000000"


def nano(usd: str) -> int:
    return int(Decimal(usd) * 10**9)


def check(gw: Served, fault_upstream: FaultUpstream, tag: str) -> None:
    fault_upstream.set_mode(tag, "inflated")  # the probe: one attempt held at its worst case, as computed here
    with gw.client(gw.keys["probe"]) as client:
        probe = client.post(CHAT, json=body(False))
    assert probe.status_code == 200, probe.text
    assert row_of(gw, probe).cost_nanousd == worst(False)
    for team, stream in (("whole", False), ("stream", True)):
        fault_upstream.set_mode(tag, FAILING[stream])
        with gw.client(gw.keys[team]) as client:
            response = client.post(CHAT, json=body(stream))
        row = row_of(gw, response)
        name = f"{tag}-{team}"
        wait_for(partial(settled, gw, name), "the reservation settled")
        found = budgets(gw)[name]
        spent, limit = nano(found["spent"]), worst(stream) + ROOM
        assert spent <= limit, f"{name}: spent {spent} nano-USD past its limit of {limit} (row {row.cost_nanousd})"
        assert response.status_code == 429, response.text
        assert response.json()["error"]["code"] == "budget_exceeded"
        assert (row.error_code, row.status, row.backend, row.cost_nanousd) == ("budget_exceeded", "error", "bad", spent)
        assert spent == BILLED if not stream else spent > ROOM  # what the failed attempt was billed, no more
    assert fault_upstream.count("inflated", tag) == 0  # the fallback was never tried (the probe went to `dyn`)


KEYS = {
    "admin": ["--admin"],
    "whole": ["--team", "whole"],
    "stream": ["--team", "stream"],
    "probe": ["--team", "probe"],
}


@pytest.mark.parametrize("store", ["local", "redis"])
def test_a_fallback_after_a_billed_failure_stops_at_the_hard_budget(
    store: str, fault_upstream: FaultUpstream, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    tag = f"topup-{store}"
    storage = {"redis": request.getfixturevalue("redis_url")} if store == "redis" else {}
    with serving_in(tmp_path)(config(fault_upstream, tag, storage), keys=KEYS) as gw:
        check(gw, fault_upstream, tag)
