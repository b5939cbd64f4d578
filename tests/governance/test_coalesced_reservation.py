"""A coalesced waiter (an identical request already calling upstream, `cache.coalesce_wait_s`) gives its budget
reservation back while it waits: answered from the other's entry it is a cache hit, charged nothing, and its
worst case held meanwhile refused other requests. It reserves again, checked as at admission, when it must call
upstream itself (the other's answer was not stored): no room, and it is refused (429) instead of calling.

One gateway with the fake backend: A streams from a backend whose stream is cut after its first token (3 s
first), so its answer is not stored; B, identical, waits on A's call; C, another request of the same size on a
slower backend, comes while both are in flight. The hard budget has room for two worst cases (and a token).
Before, B held its worst case while it waited and C was refused (429: A's, B's and C's are three). Now C is
admitted; when A's stream is cut, B reserves again, finds A's spend and C's reservation there, and is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from margin.cache.flight import LocalFlights
from margin.governance.store import LocalStore
from margin.pipeline.steps.cache import Cache
from tests.helpers import Gateway, fake_settings, gateway, polls, reserved_input

CHAT = "/v1/chat/completions"


def body(model: str) -> dict[str, Any]:
    messages = [{"role": "user", "content": "hi"}]
    return {"model": model, "messages": messages, "max_tokens": 4, "stream": True, "temperature": 0}


WORST = reserved_input(body("priced")) + 4  # one request's worst case: its prompt's bound and its max_tokens


def flights(gw: Gateway) -> LocalFlights:
    found = next(step for step in gw.services.flow.steps if isinstance(step, Cache)).flights
    assert isinstance(found, LocalFlights)
    return found


async def reserved(gw: Gateway) -> int:
    store = gw.services.governance.store
    assert isinstance(store, LocalStore)
    counters = await store.counters(list(store._counters))  # the one budget's counter
    return sum(held for _, held in counters.values())


async def test_a_coalesced_waiter_gives_its_reservation_back_and_takes_it_again_to_call_upstream(
    tmp_path: Path,
) -> None:
    budget = {"name": "all", "scope": {"kind": "global"}, "tokens": 2 * WORST + 1, "period": "day", "mode": "hard"}
    backends = {
        "api": {"kind": "fake", "output_tokens": 4, "ttft_ms": 3000, "fail_after_tokens": 1},
        "slow": {"kind": "fake", "output_tokens": 4, "ttft_ms": 10000},
    }
    models = {"priced": {"backend": "api", "price": {"input": "1", "output": "1"}}}
    models["pricex"] = {"backend": "slow", "price": {"input": "1", "output": "1"}}  # the same worst case
    settings = fake_settings(tmp_path / "l.db", budgets=[budget], backends=backends, models=models)
    async with gateway(settings) as gw:

        async def send(model: str) -> tuple[int, str]:
            answer = await gw.http.post(CHAT, json=body(model), headers={"x-margin-cache": "on"}, timeout=60)
            return answer.status_code, answer.text

        first = asyncio.create_task(send("priced"))
        for _ in polls(10):  # A owns the flight
            if len(flights(gw)._flights) == 1:
                break
            await asyncio.sleep(0.01)
        waiter = asyncio.create_task(send("priced"))
        for _ in polls(2.5):  # B waits on it and (now) has given its reservation back: A's alone is held
            flight = next(iter(flights(gw)._flights.values()))
            if flight.waiters == 1 and await reserved(gw) == WORST:
                break
            await asyncio.sleep(0.01)
        other = await send("pricex")  # C, while A and B are in flight
        a, b = await first, await waiter
        rows = await gw.rows()
    assert other[0] == 200, other[1]  # before: 429, B's worst case held while it waited
    assert a[0] == 200 and "[DONE]" in a[1]  # A's stream cut after its first token: nothing stored
    assert b[0] == 429 and "budget_exceeded" in b[1], b  # B reserved again, and there was no room: not called
    spent = sum(row.input_tokens + row.output_tokens for row in rows)
    assert 0 < spent <= 2 * WORST + 1
    assert sum(1 for row in rows if row.model == "priced" and row.output_tokens) == 1  # A's call only
