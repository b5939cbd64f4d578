"""The load generator against real HTTP servers: margin with the fake backend (live uvicorn) and a scripted
SSE app. Closed loop never exceeds its concurrency; failures, empty chunks and missing usage are handled."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from margin.app import build_app
from margin.bench import loadgen
from margin.bench.prompts import Prompt
from margin.bench.records import RequestRecord
from tests.helpers import fake_settings, live_server

PROMPTS = [Prompt("hello there general kenobi", 4, 5)]


def max_overlap(records: list[RequestRecord]) -> int:
    """Most requests in flight at any instant, from the raw timestamps alone."""
    events = sorted(
        [(r.sent_s, 1) for r in records] + [(r.end_s or r.sent_s, -1) for r in records], key=lambda e: (e[0], e[1])
    )
    depth = peak = 0
    for _, step in events:
        depth += step
        peak = max(peak, depth)
    return peak


def paced(db: Path, **backend: Any) -> Any:
    fake = {"kind": "fake", "output_tokens": 5, "ttft_ms": 20, "tokens_per_s": 400, **backend}
    return build_app(fake_settings(db, backends={"fake": fake}))


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_closed_loop_never_exceeds_concurrency(db_path: Path, concurrency: int) -> None:
    async with live_server(paced(db_path)) as url, loadgen.session() as session:
        target = loadgen.Target(f"{url}/v1", "fake-chat")
        shape = loadgen.LoadShape(concurrency=concurrency, num_requests=12)
        outcome = await loadgen.run_load(session, target, PROMPTS, shape)
    records = outcome.records
    assert [r.index for r in records] == list(range(12))
    assert all(r.ok and r.status == 200 for r in records)
    assert all(r.output_tokens == 5 and r.tokens_source == "usage" for r in records)
    assert all(r.input_tokens is not None and r.input_tokens > 0 for r in records)
    assert outcome.client["max_in_flight"] == concurrency
    assert max_overlap(records) <= concurrency
    assert all(r.ttft_s is not None and r.ttft_s >= 0.015 for r in records)  # the backend's 20 ms TTFT
    assert all(len(r.chunk_s) == 5 for r in records)


async def test_open_loop_follows_the_schedule_and_duration(db_path: Path) -> None:
    async with live_server(paced(db_path, ttft_ms=0, tokens_per_s=None)) as url, loadgen.session() as session:
        target = loadgen.Target(f"{url}/v1", "fake-chat", endpoint="completions")
        shape = loadgen.LoadShape(rate=40.0, duration_s=1.0, seed=3)
        outcome = await loadgen.run_load(session, target, PROMPTS, shape)
    scheduled = [r.scheduled_s for r in outcome.records]
    assert all(s is not None and s < 1.0 for s in scheduled)
    assert 20 <= len(outcome.records) <= 60  # Poisson(40) over 1 s
    assert all(r.ok and r.output_tokens == 5 for r in outcome.records)
    assert all(r.sent_s >= (r.scheduled_s or 0) - 1e-6 for r in outcome.records)
    assert outcome.client["cpu_ms_per_request"] > 0


async def test_failed_requests_are_recorded_not_raised(db_path: Path) -> None:
    async with live_server(paced(db_path, fail_status=502)) as url, loadgen.session() as session:
        outcome = await loadgen.run_load(
            session, loadgen.Target(f"{url}/v1", "fake-chat"), PROMPTS, loadgen.LoadShape(concurrency=2, num_requests=4)
        )
    assert all(not r.ok and r.status == 502 and r.error for r in outcome.records)
    unreachable = loadgen.Target("http://127.0.0.1:9/v1", "x", timeout_s=2)
    async with loadgen.session() as session:
        record = await loadgen.send_one(session, unreachable, PROMPTS[0], RequestRecord(0, 0.0), 0.0)
    assert not record.ok and record.status is None and "ClientConnectorError" in (record.error or "")


def scripted_sse(events: list[dict[str, Any]], gap_s: float) -> Any:
    """A bare ASGI app streaming `events` as SSE, `gap_s` apart, then [DONE]."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for event in events:
            await asyncio.sleep(gap_s)
            await send(
                {"type": "http.response.body", "body": b"data: " + orjson.dumps(event) + b"\n\n", "more_body": True}
            )
        await send({"type": "http.response.body", "body": b": comment\n\ndata: [DONE]\n\n"})

    return app


async def test_empty_chunks_do_not_count_and_tokens_fall_back_to_chunks() -> None:
    def delta(text: str) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}

    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},  # role header: no text
        delta("Hel"),
        delta(""),  # an empty content chunk
        delta("lo"),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    async with live_server(scripted_sse(events, 0.02)) as url, loadgen.session() as session:
        record = await loadgen.send_one(
            session, loadgen.Target(f"{url}/v1", "m"), PROMPTS[0], RequestRecord(0, 0.0), 0.0
        )
    assert record.ok
    assert len(record.chunk_s) == 2 and record.output_tokens == 2 and record.tokens_source == "chunks"
    assert record.input_tokens is None
    assert record.ttft_s is not None and record.ttft_s > 0.03  # the role header (at ~20 ms) did not stop the clock
    assert record.itl_s[0] == pytest.approx(0.04, abs=0.03)  # the empty chunk between them is no gap
    assert record.end_s is not None and record.end_s > record.chunk_s[-1]  # the finish chunk ends the stream


def test_target_body_carries_forcing_and_extra_fields() -> None:
    target = loadgen.Target("http://h/v1/", "m", ignore_eos=True, extra_body={"logit_bias": {"2": -100}})
    body = orjson.loads(target.body(Prompt("hi", 1, 7)))
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 7 and body["ignore_eos"] is True and body["logit_bias"] == {"2": -100}
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert target.url() == "http://h/v1/chat/completions"
    completions = loadgen.Target("http://h/v1", "m", endpoint="completions", api_key="k")
    assert orjson.loads(completions.body(Prompt("hi", 1, None)))["prompt"] == "hi"
    assert completions.headers()["authorization"] == "Bearer k"


async def test_closed_loop_by_duration_stops_sending_then_drains(db_path: Path) -> None:
    """A request takes ~35 ms once the server is warm, so 1 s leaves room for ~50 and the test asks for 4 (each
    worker sent again). The first requests to a fresh server take ~0.3 s (lazy set-up), so two warm it up first:
    with a cold start inside a 0.5 s run, the second round had ~0.15 s to spare, and lost it on a loaded box."""
    async with live_server(paced(db_path)) as url, loadgen.session() as session:
        target = loadgen.Target(f"{url}/v1", "fake-chat")
        warm = [loadgen.send_one(session, target, PROMPTS[0], RequestRecord(i, 0.0), 0.0) for i in range(2)]
        assert all(r.ok for r in await asyncio.gather(*warm))
        outcome = await loadgen.run_load(session, target, PROMPTS, loadgen.LoadShape(concurrency=2, duration_s=1.0))
    records = outcome.records
    assert len(records) >= 4 and all(r.ok for r in records)
    assert all(r.sent_s < 1.0 for r in records)  # nothing leaves after the duration
    assert outcome.duration_s >= max(r.end_s or 0 for r in records)  # in-flight requests were waited for
    assert max_overlap(records) <= 2
