"""The load generator: one asyncio process, aiohttp, every request streamed (SSE) so TTFT and ITL are real.

Closed loop: N workers, each sends its next request when its last one ends (never more than N in flight).
Open loop: requests leave on a Poisson/gamma schedule whatever happened to earlier ones.
Tokens: the server's `usage` (requested with stream_options.include_usage) when it sends one, else one token
per text chunk (labelled `chunks`). The client measures itself: CPU seconds per request, event-loop lag and
late starts, so a result says whether the client could have been the bottleneck."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import numpy as np
import orjson

from margin.bench.arrivals import schedule
from margin.bench.prompts import Prompt
from margin.bench.records import RequestRecord
from margin.errors import InvalidRequest

LATE_S = 0.005  # an open-loop request leaving this much after its slot counts as a late start
LAG_TICK_S = 0.01


@dataclass(frozen=True, slots=True)
class Target:
    base_url: str  # …/v1
    model: str
    endpoint: Literal["chat", "completions"] = "chat"
    api_key: str | None = None
    ignore_eos: bool = False
    extra_body: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 600.0

    def url(self) -> str:
        path = "chat/completions" if self.endpoint == "chat" else "completions"
        return f"{self.base_url.rstrip('/')}/{path}"

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return headers

    def body(self, prompt: Prompt) -> bytes:
        body: dict[str, Any] = {"model": self.model, "stream": True, "stream_options": {"include_usage": True}}
        if self.endpoint == "chat":
            body["messages"] = prompt.messages()
        else:
            body["prompt"] = prompt.text
        if prompt.output_len is not None:
            body["max_tokens"] = prompt.output_len
        if self.ignore_eos:
            body["ignore_eos"] = True
        return orjson.dumps({**body, **self.extra_body})


MAX_CONCURRENCY = 10_000  # requests in flight from one client process
MAX_REQUESTS = 10_000_000  # per load point


@dataclass(frozen=True, slots=True)
class LoadShape:
    concurrency: int | None = None  # closed loop
    rate: float | None = None  # open loop, requests/s (inf: all at once)
    burstiness: float = 1.0
    num_requests: int | None = None
    duration_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        """Refused before anything is sent (before: concurrency 0 or rate NaN measured nothing and exited 0;
        concurrency 10^8 started 10^8 tasks and hung)."""
        if self.concurrency is not None and not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise InvalidRequest(f"concurrency must be 1 to {MAX_CONCURRENCY:,}, not {self.concurrency}")
        if self.rate is not None and not self.rate > 0:  # NaN is not; inf is (everything at once)
            raise InvalidRequest("the request rate must be positive (use inf to send everything at once)")
        if not (math.isfinite(self.burstiness) and self.burstiness > 0):
            raise InvalidRequest("burstiness must be positive and finite")
        if self.num_requests is not None and not 1 <= self.num_requests <= MAX_REQUESTS:
            raise InvalidRequest(f"the number of requests must be 1 to {MAX_REQUESTS:,}")
        if self.duration_s is not None and not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise InvalidRequest("the duration must be positive and finite")

    def label(self) -> str:
        if self.concurrency is not None:
            return f"concurrency={self.concurrency}"
        return f"rate={self.rate:g}/s" + (f" burstiness={self.burstiness:g}" if self.burstiness != 1 else "")


@dataclass(slots=True)
class LoadOutcome:
    records: list[RequestRecord]
    duration_s: float
    started_unix: float
    client: dict[str, Any]


def _text_of(choice: dict[str, Any]) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return str(delta.get("content") or delta.get("reasoning_content") or "")
    return str(choice.get("text") or "")


def _apply_event(record: RequestRecord, data: dict[str, Any], now: float) -> None:
    if data.get("error"):
        record.error = str(data["error"])[:300]
    choices = data.get("choices") or []
    if choices and _text_of(choices[0]):
        record.chunk_s.append(now)
    usage = data.get("usage")
    if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
        record.output_tokens = int(usage["completion_tokens"])
        record.input_tokens = usage.get("prompt_tokens")
        record.tokens_source = "usage"
    record.end_s = now


async def send_one(
    session: aiohttp.ClientSession, target: Target, prompt: Prompt, record: RequestRecord, origin: float
) -> RequestRecord:
    """Send one streamed request; fill `record` with times relative to `origin`."""
    body, timeout = target.body(prompt), aiohttp.ClientTimeout(total=target.timeout_s)
    record.sent_s = time.perf_counter() - origin
    try:
        async with session.post(target.url(), data=body, headers=target.headers(), timeout=timeout) as response:
            record.status = response.status
            if response.status != 200:
                record.error = (await response.text())[:300]
                record.end_s = time.perf_counter() - origin
                return record
            async for line in response.content:
                now = time.perf_counter() - origin
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                _apply_event(record, orjson.loads(payload), now)
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"[:300]
        record.end_s = time.perf_counter() - origin
        return record
    if record.tokens_source == "chunks":
        record.output_tokens = len(record.chunk_s)
    record.ok = record.error is None and record.end_s is not None
    return record


class _Clock:
    """Event-loop lag: how late a 10 ms timer fires, sampled for the whole run."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            due = time.perf_counter() + LAG_TICK_S
            await asyncio.sleep(LAG_TICK_S)
            self.lags.append(max(0.0, time.perf_counter() - due))

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def run_load(
    session: aiohttp.ClientSession,
    target: Target,
    prompts: Sequence[Prompt],
    shape: LoadShape,
    on_done: Callable[[RequestRecord], None] | None = None,
) -> LoadOutcome:
    if shape.num_requests is None and shape.duration_s is None:
        raise InvalidRequest("give a request count or a duration")
    if (shape.concurrency is None) == (shape.rate is None):
        raise InvalidRequest("give either a concurrency (closed loop) or a rate (open loop)")
    records: list[RequestRecord] = []
    clock, cpu0, started_unix = _Clock(), time.process_time(), time.time()
    clock.start()
    origin = time.perf_counter()

    def done(record: RequestRecord) -> None:
        records.append(record)
        if on_done is not None:
            on_done(record)

    if shape.concurrency is not None:
        state = await _closed(session, target, prompts, shape, origin, done)
    else:
        state = await _open(session, target, prompts, shape, origin, done)
    duration = time.perf_counter() - origin
    cpu = time.process_time() - cpu0
    await clock.stop()
    records.sort(key=lambda r: r.index)
    lags = np.asarray(clock.lags or [0.0]) * 1000
    client = {
        "cpu_s": round(cpu, 4),
        "cpu_ms_per_request": round(cpu * 1000 / max(1, len(records)), 4),
        "cpu_share_of_one_core": round(cpu / duration, 4) if duration > 0 else None,
        "loop_lag_ms": {k: round(float(np.percentile(lags, q)), 4) for k, q in (("p50", 50), ("p99", 99))}
        | {"max": round(float(lags.max()), 4)},
        **state,
    }
    return LoadOutcome(records, duration, started_unix, client)


def _prompt(prompts: Sequence[Prompt], index: int) -> Prompt:
    return prompts[index % len(prompts)]


async def _closed(
    session: aiohttp.ClientSession,
    target: Target,
    prompts: Sequence[Prompt],
    shape: LoadShape,
    origin: float,
    done: Callable[[RequestRecord], None],
) -> dict[str, Any]:
    state = {"next": 0, "in_flight": 0, "max_in_flight": 0}

    def more() -> bool:
        if shape.num_requests is not None and state["next"] >= shape.num_requests:
            return False
        return shape.duration_s is None or time.perf_counter() - origin < shape.duration_s

    async def worker() -> None:
        while more():
            index = state["next"]
            state["next"] += 1
            state["in_flight"] += 1
            state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
            record = RequestRecord(index, 0.0, prompt_len_est=_prompt(prompts, index).input_len)
            try:
                done(await send_one(session, target, _prompt(prompts, index), record, origin))
            finally:
                state["in_flight"] -= 1

    assert shape.concurrency is not None
    await asyncio.gather(*(worker() for _ in range(shape.concurrency)))
    return {"max_in_flight": state["max_in_flight"], "late_starts": 0}


async def _open(
    session: aiohttp.ClientSession,
    target: Target,
    prompts: Sequence[Prompt],
    shape: LoadShape,
    origin: float,
    done: Callable[[RequestRecord], None],
) -> dict[str, Any]:
    assert shape.rate is not None
    count = shape.num_requests
    if count is None:
        assert shape.duration_s is not None
        if math.isinf(shape.rate):
            raise InvalidRequest("an infinite rate needs a request count")
        count = math.ceil(shape.rate * shape.duration_s * 2) + 10
    times = schedule(shape.rate, count, burstiness=shape.burstiness, seed=shape.seed)
    state = {"in_flight": 0, "max_in_flight": 0, "late_starts": 0}

    async def one(index: int, due: float) -> None:
        state["in_flight"] += 1
        state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
        record = RequestRecord(index, 0.0, scheduled_s=due, prompt_len_est=_prompt(prompts, index).input_len)
        try:
            done(await send_one(session, target, _prompt(prompts, index), record, origin))
        finally:
            state["in_flight"] -= 1
        if record.sent_s - due > LATE_S:
            state["late_starts"] += 1

    tasks = []
    for index, due in enumerate(times):
        if shape.duration_s is not None and due >= shape.duration_s:
            break
        delay = origin + due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, due)))
    await asyncio.gather(*tasks)
    return {"max_in_flight": state["max_in_flight"], "late_starts": state["late_starts"]}


def session(connections: int = 1024) -> aiohttp.ClientSession:
    """Keep-alive connections; no client-side cap below the load's own concurrency."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections), auto_decompress=False)
