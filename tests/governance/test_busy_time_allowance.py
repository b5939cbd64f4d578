"""A hard budget holds on backends priced by busy time (TCO), however slow they are: the reservation prices a
busy-time allowance (at least `admission.hard_busy_reserve_s`) and the call is cut there, so a slow first
token or a slow pace cannot charge past what was reserved. Soft budgets and requests without budgets are not
cut. In-process gateway, fake backends; the same through a running `margin serve`:
tests/security/test_rules_busy_time.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from margin.economics.energy import Probe
from margin.governance import admission as adm
from margin.specs import AdmissionConfig
from tests.helpers import Gateway, fake_settings, gateway, live_server

CHAT = "/v1/chat/completions"
ALLOWANCE_S = 0.25
# ~0.6 s an answer (150 ms to the first token, then 40 tokens/s); its throughput is configured at 1,000 tokens/s,
# so the old reservation priced ~0.12 s of busy time (the request's JSON bytes + max_tokens at 1,000/s)
SLOW: dict[str, Any] = {
    "kind": "fake",
    "output_tokens": 20,
    "ttft_ms": 150,
    "tokens_per_s": 40,
    "region": "eu",
    "hardware": {"usd_per_hour": "3.60", "watts_busy": 100, "tokens_per_s": 1000},
}
LIMIT_NANOUSD = 2_000_000  # $0.002: ~2 s of the slow backend ($3.60/h and its energy): 7 allowances


def settings(db_path: Path, budgets: list[dict[str, Any]], backend: dict[str, Any] = SLOW) -> Any:
    """Three models on one slow backend priced by busy time (`fake`), with these budgets."""
    models = {"fake-chat": {"backend": "fake"}, "hard-chat": {"backend": "fake"}, "soft-chat": {"backend": "fake"}}
    return fake_settings(
        db_path,
        backends={"fake": backend},
        models=models,
        budgets=budgets,
        admission={"hard_busy_reserve_s": ALLOWANCE_S},
    )


def chat(model: str = "fake-chat", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, **extra}


async def ask(gw: Gateway, body: dict[str, Any]) -> tuple[int, str | None, bytes]:
    """(HTTP status, the error code of the JSON answer or of the stream's error event, the body)."""
    async with gw.http.stream("POST", CHAT, json=body) as reply:
        data = b"".join([part async for part in reply.aiter_bytes()])
    if reply.status_code != 200:
        return reply.status_code, httpx.Response(reply.status_code, content=data).json()["error"]["code"], data
    code = "budget_time_allowance" if b'"code":"budget_time_allowance"' in data else None
    return reply.status_code, code, data


async def test_a_slow_tco_backend_cannot_charge_past_a_hard_budget(db_path: Path) -> None:
    """16 concurrent requests (half streamed) on a backend that takes ~0.6 s an answer, against a hard budget of
    ~2 s of it. Before, each reserved ~0.12 s and was charged its ~0.6 s: all 16 were admitted and charged ~5×
    the limit. Now each reserves 0.25 s, its call is cut there (504, or an error event mid-stream) and the total
    charged stays within the limit."""
    budget = {"name": "g", "scope": {"kind": "global"}, "usd": "0.002", "period": "lifetime"}
    async with gateway(settings(db_path, [budget])) as gw:
        answers = await asyncio.gather(*(ask(gw, chat(stream=i % 2 == 1)) for i in range(16)))
        rows = await gw.rows()
    assert sum(r.cost_nanousd or 0 for r in rows) <= LIMIT_NANOUSD
    cut = [r for r in rows if r.error_code == "budget_time_allowance"]
    assert cut and all(r.status == "upstream_timeout" and r.http_status == 504 for r in cut)
    assert all(r.busy_ms <= ALLOWANCE_S * 1000 for r in rows if r.busy_ms is not None)
    assert {(status, code) for status, code, _ in answers} <= {
        (504, "budget_time_allowance"),  # a whole answer
        (200, "budget_time_allowance"),  # a stream, cut after its first tokens
        (429, "budget_exceeded"),
    }
    whole = next(data for status, code, data in answers if status == 504)
    assert b"the hard budget's time allowance was reached" in whole
    streamed = next(data for status, code, data in answers if status == 200)
    assert b'"content":"tok "' in streamed and streamed.endswith(b"data: [DONE]\n\n")


async def test_soft_budgets_and_requests_without_budgets_are_not_cut(db_path: Path) -> None:
    """One slow backend, three models: under a hard budget the call is cut at its allowance; under a soft budget
    (already past its amount: soft budgets never refuse) or under none, it runs to its end and is charged the
    busy time it measured, as before."""
    budgets = [
        {"name": "hard", "scope": {"kind": "model", "value": "hard-chat"}, "usd": "5", "period": "lifetime"},
        {"name": "soft", "scope": {"kind": "model", "value": "soft-chat"}, "usd": "0.0001", "mode": "soft"},
    ]
    async with gateway(settings(db_path, budgets)) as gw:
        asked = [(model, stream) for model in ("soft-chat", "fake-chat", "hard-chat") for stream in (False, True)]
        answers = await asyncio.gather(*(ask(gw, chat(model, stream=stream)) for model, stream in asked))
        rows = sorted(await gw.rows(), key=lambda r: asked.index((r.model, r.stream)))
    assert [(status, code) for status, code, _ in answers] == [
        (200, None),
        (200, None),
        (200, None),
        (200, None),
        (504, "budget_time_allowance"),
        (200, "budget_time_allowance"),
    ]
    assert all(data.count(b"tok ") == 20 for _, _, data in answers[:4])  # whole answers, to their end
    assert [(r.status, r.output_tokens) for r in rows[:4]] == [("ok", 20)] * 4
    assert all(r.busy_ms > 500 for r in rows[:4])  # ~0.6 s, measured and charged
    assert all(r.busy_ms <= ALLOWANCE_S * 1000 for r in rows[4:])


async def slow_upstream(request: Request) -> Response:
    """An OpenAI-compatible upstream (a self-hosted vLLM, say) that takes 0.6 s: whole, or 0.1 s an event."""
    body = await request.json()
    choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    if not body.get("stream"):
        await asyncio.sleep(0.6)
        return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [choice]})  # fmt: skip

    async def events() -> AsyncIterator[bytes]:
        for _ in range(6):
            await asyncio.sleep(0.1)
            delta = {"index": 0, "delta": {"content": "ok "}, "finish_reason": None}
            yield b"data: " + orjson.dumps({"id": "x", "object": "chat.completion.chunk", "choices": [delta]}) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def test_an_openai_compatible_tco_backend_is_cut_at_the_allowance(db_path: Path) -> None:
    """The same bound on a proxied self-hosted server: its JSON answer is cut (504) and its stream ends with an
    error event after its first events; each is charged at most the busy time reserved."""
    upstream = Starlette(routes=[Route("/v1/chat/completions", slow_upstream, methods=["POST"])])
    async with live_server(upstream) as url:
        hardware = {"usd_per_hour": "3.60", "tokens_per_s": 1000}
        backend = {"kind": "openai", "base_url": url + "/v1", "region": "eu", "hardware": hardware}
        budget = {"name": "g", "scope": {"kind": "global"}, "usd": "5", "period": "lifetime"}
        async with gateway(settings(db_path, [budget], backend)) as gw:
            answers = [await ask(gw, chat("hard-chat", stream=stream)) for stream in (False, True)]
            rows = await gw.rows()
    assert [(status, code) for status, code, _ in answers] == [
        (504, "budget_time_allowance"),
        (200, "budget_time_allowance"),
    ]
    assert b'"content":"ok "' in answers[1][2] and answers[1][2].endswith(b"data: [DONE]\n\n")
    assert [(r.status, r.error_code) for r in rows] == [("upstream_timeout", "budget_time_allowance")] * 2
    assert all(r.busy_ms <= ALLOWANCE_S * 1000 for r in rows)


def test_the_allowance_is_the_estimate_at_least_the_floor_at_most_the_backends_timeout() -> None:
    config = AdmissionConfig(hard_busy_reserve_s=30, reserve_tokens_per_s=10)
    settings = fake_settings(
        Path("unused.db"),
        backends={
            "fake": SLOW,
            "vllm": {
                "kind": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "timeout_s": 45,
                "hardware": {"usd_per_hour": "2.50", "tokens_per_s": 50},
            },
        },
        models={"local": {"backend": "vllm"}},
    )
    fake, vllm = settings.backends["fake"], settings.backends["vllm"]
    assert adm.busy_allowance_s(fake, 1_000, config) == 30  # 1 s at 1,000 tokens/s: the floor
    assert adm.busy_allowance_s(fake, 100_000, config) == 100  # 100 s at 1,000 tokens/s
    assert adm.busy_allowance_s(vllm, 1_000, config) == 30  # 20 s at 50 tokens/s: the floor
    assert adm.busy_allowance_s(vllm, 10_000, config) == 45  # 200 s at 50 tokens/s: its total timeout


async def test_the_reservation_prices_the_allowance(db_path: Path) -> None:
    """The amount held is the allowance's price on the dearest candidate (here ALLOWANCE_S of $3.60/h with
    100 W at PUE 1.2 and $0.20/kWh), not the tokens at the configured throughput."""
    budget = {"name": "g", "scope": {"kind": "global"}, "usd": "5", "period": "lifetime"}
    async with gateway(settings(db_path, [budget])) as gw:
        meter = gw.services.meter
        target = gw.services.targets["hard-chat"]
        config = gw.services.settings.admission
        worst, _ = adm.worst_case_usd(meter, [target], 100, 20, config, {"hard-chat": ALLOWANCE_S})
    per_s = Decimal("3.60") / 3600 + Decimal(100 * 1.2) / Decimal(3_600_000) * Decimal("0.20")
    assert abs(worst - per_s * Decimal(repr(ALLOWANCE_S))) < Decimal("1e-12")


class HotPackage:
    """A RAPL meter that reads 50 kJ over every call, whatever the backend's `watts_busy` (100 W) says: the
    package counters see the whole machine."""

    def probe(self) -> Probe:
        return Probe(time.perf_counter(), [0])

    def measure(self, probe: Probe, busy_s: float) -> float:
        return 50_000.0


async def test_measured_energy_past_the_modelled_one_is_not_charged_past_the_reservation(db_path: Path) -> None:
    """An on-host backend's energy is measured (RAPL), and may exceed the `watts_busy` its reservation priced.
    Before, the charge counted the measured energy: ~$0.0034 a request against a reservation of $0.00025. Now
    the cost counts at most the energy the allowance priced; the row still reports the measured energy."""
    budget = {"name": "g", "scope": {"kind": "global"}, "usd": "5", "period": "lifetime"}
    async with gateway(settings(db_path, [budget])) as gw:
        meter = gw.services.meter
        meter.rapl = HotPackage()  # type: ignore[assignment]
        meter._on_host = {"fake"}  # measured, as for the embedded model
        answers = await asyncio.gather(*(ask(gw, chat(stream=i % 2 == 1)) for i in range(4)))
        rows = await gw.rows()
        reserved, _ = adm.worst_case_usd(
            meter, [gw.services.targets["fake-chat"]], 100, 20, gw.services.settings.admission, {"fake-chat": 0.25}
        )
    assert {status for status, _, _ in answers} <= {200, 504} and len(rows) == 4
    assert reserved is not None
    for row in rows:
        assert row.energy_method == "measured" and row.busy_ms is not None
        assert row.energy_j == pytest.approx(50_000.0 * 1.2)  # the reading (× PUE), kept
        assert row.cost_nanousd <= reserved * 10**9 + 1, (row.cost_nanousd, reserved)
