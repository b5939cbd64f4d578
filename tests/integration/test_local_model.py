"""`margin serve` as a subprocess with the real SmolLM2 model on llama.cpp and the real MiniLM embedder,
called with the official openai SDK. The ledger and `margin report --json` must agree with the usage the
API returned."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import pytest
import sqlalchemy as sa

from tests.helpers import margin_serve

pytestmark = pytest.mark.integration
NO_EOS = {"2": -100, "0": -100}  # SmolLM2's end tokens: generation then runs to max_tokens


@dataclass
class Server:
    url: str
    db: Path
    process: subprocess.Popen[bytes]
    log: Path
    usage: list[tuple[int, int]] = field(default_factory=list)  # (prompt, completion) the API reported

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(api_key="local", base_url=f"{self.url}/v1", max_retries=0, timeout=120)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(api_key="local", base_url=f"{self.url}/v1", max_retries=0, timeout=300)

    def note(self, usage: Any) -> None:
        self.usage.append((usage.prompt_tokens, usage.completion_tokens))


def margin_command() -> list[str]:
    return [sys.executable, "-m", "margin"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve")
    db, log = root / "ledger.db", root / "serve.log"
    with margin_serve(db, log) as (url, process):
        yield Server(url, db, process, log)


def test_banner_says_open_on_loopback(server: Server) -> None:
    text = server.log.read_text()
    assert "running OPEN" in text and "smollm2-135m-instruct" in text


def test_models(server: Server) -> None:
    ids = {m.id for m in server.client().models.list()}
    assert {"smollm2-135m-instruct", "local", "all-minilm-l6-v2"} <= ids


def test_chat_completion(server: Server) -> None:
    raw = server.client().chat.completions.with_raw_response.create(
        model="local",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    reply = raw.parse()
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.prompt_tokens > 10 and 0 < reply.usage.completion_tokens <= 24
    assert Decimal(raw.headers["x-margin-cost-usd"]) > 0
    server.note(reply.usage)


def test_stream_with_usage(server: Server) -> None:
    stream = server.client().chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text and usage is not None and 0 < usage.completion_tokens <= 20
    server.note(usage)


def test_completions_and_stop(server: Server) -> None:
    reply = server.client().completions.create(
        model="local", prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=[" 7"], logit_bias=NO_EOS
    )
    assert " 7" not in reply.choices[0].text
    assert reply.usage is not None
    server.note(reply.usage)


def test_max_tokens_zero_generates_nothing(server: Server) -> None:
    """`max_tokens: 0` on a completion (what scores or echoes a prompt: `echo` with nothing generated) made the
    local model generate one token anyway (`"The sky is the"`, `completion_tokens: 1`, billed): the limit was
    checked after each token. Nothing is generated now, streamed or not."""
    client = server.client()
    for echo in (True, False):
        reply = client.completions.create(model="local", prompt="The sky is", max_tokens=0, echo=echo)
        assert reply.choices[0].text == ("The sky is" if echo else "")
        assert reply.usage is not None and reply.usage.completion_tokens == 0 and reply.usage.prompt_tokens > 0
        assert reply.choices[0].finish_reason == "length"
        server.note(reply.usage)
    stream = client.completions.create(
        model="local", prompt="The sky is", max_tokens=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ""
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 0
    server.note(usage)


def test_what_the_local_model_cannot_do_is_refused_not_ignored(server: Server) -> None:
    """Legacy `functions` (the tools of OpenAI's older API) and `tool_choice: required` were answered in plain
    text as if not asked, and a completion's `logprobs: 0` (the chosen tokens' log probabilities) with
    `logprobs: null`; `tools` and `logprobs: 1` were already refused. Each is 400 naming the field, before
    anything is generated: it costs nothing."""
    client, hi = server.client(), cast("Any", [{"role": "user", "content": "hi"}])
    functions: Any = [{"name": "get_weather", "parameters": {"type": "object"}}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="local", messages=hi, functions=functions)
    assert (refused.value.code, refused.value.param) == ("unsupported_parameter", "functions")
    first = refused.value.request_id or ""
    with pytest.raises(openai.BadRequestError) as refused:  # a tool call demanded, none it can make
        client.chat.completions.create(model="local", messages=hi, tool_choice="required")
    assert (refused.value.code, refused.value.param) == ("unsupported_parameter", "tool_choice")
    server.usage.append((0, 0))
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="local", prompt="The sky is", max_tokens=2, logprobs=0)
    assert (refused.value.code, refused.value.param) == ("unsupported_parameter", "logprobs")
    for request_id in (first, refused.value.request_id or ""):
        row = wait_for_row(server.db, request_id)
        assert (row["input_tokens"], row["output_tokens"], row["usage_source"]) == (0, 0, "refused")
        server.usage.append((0, 0))  # a row of its own, of no tokens (test_ledger_and_report_match_the_api)


def test_embeddings(server: Server) -> None:
    reply = server.client().embeddings.create(
        model="text-embedding-local", input=["a cat sat on the mat", "a kitten rested on a rug", "GDP fell"]
    )
    vectors = [d.embedding for d in reply.data]
    assert len(vectors) == 3 and len(vectors[0]) == 384
    dot = [sum(a * b for a, b in zip(vectors[0], v, strict=True)) for v in vectors]
    assert dot[0] == pytest.approx(1.0, abs=1e-3) and dot[1] > dot[2]
    server.usage.append((reply.usage.prompt_tokens, 0))


def test_eight_concurrent_requests(server: Server) -> None:
    async def run() -> list[Any]:
        client = server.async_client()
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model="local",
                    max_tokens=12,
                    temperature=0,
                    messages=[{"role": "user", "content": f"Say the number {i}."}],
                )
                for i in range(8)
            )
        )
        await client.close()
        return replies

    replies = asyncio.run(run())
    assert len({r.id for r in replies}) == 8
    for reply in replies:
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        server.note(reply.usage)


def test_event_loop_stays_free_while_the_model_generates(server: Server) -> None:
    async def run() -> tuple[list[float], Any]:
        client = server.async_client()
        generation = asyncio.create_task(
            client.completions.create(model="local", prompt="Once upon a time", max_tokens=200, logit_bias=NO_EOS)
        )
        await asyncio.sleep(0.5)  # generating now
        waits = []
        async with httpx.AsyncClient(base_url=server.url) as http:
            for _ in range(20):
                started = time.perf_counter()
                assert (await http.get("/healthz")).status_code == 200
                assert (await http.get("/v1/models")).status_code == 200
                waits.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)
        reply = await generation
        await client.close()
        return waits, reply

    waits, reply = asyncio.run(run())
    assert reply.usage.completion_tokens == 200
    server.note(reply.usage)
    waits.sort()
    # two small requests answered in well under the time of a single decode step batch
    assert waits[len(waits) // 2] < 0.05, waits


def test_client_disconnect_stops_generation(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        body = {
            "model": "local",
            "prompt": "Once upon a time",
            "max_tokens": 3000,
            "stream": True,
            "logit_bias": NO_EOS,
        }
        with http.stream("POST", "/v1/completions", json=body) as response:
            request_id = response.headers["x-margin-request-id"]
            events = 0
            for line in response.iter_lines():
                events += line.startswith("data: ")
                if events >= 10:
                    break
        started = time.perf_counter()
        reply = server.client().completions.create(model="local", prompt="Hi", max_tokens=4)
        waited = time.perf_counter() - started
    server.note(reply.usage)
    assert waited < 20  # had generation continued, this request would queue behind ~3000 tokens
    row = wait_for_row(server.db, request_id)
    assert (row["status"], row["http_status"]) == ("client_closed", 499)
    assert 10 <= row["output_tokens"] < 1000
    server.usage.append((row["input_tokens"], row["output_tokens"]))


def test_exact_cache_hit_on_the_real_model(server: Server) -> None:
    """A deterministic request asked twice: the second answer comes from the cache, identical, at no cost."""
    client = server.client()
    ask: dict[str, Any] = {
        "model": "local",
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 12,
    }
    first = client.chat.completions.with_raw_response.create(**ask, temperature=0)
    second = client.chat.completions.with_raw_response.create(**ask, temperature=0)
    one, two = first.parse(), second.parse()
    server.note(one.usage)
    server.note(two.usage)
    assert first.headers["x-margin-cache"] == "miss" and second.headers["x-margin-cache"] == "hit-exact"
    assert two.choices[0].message.content == one.choices[0].message.content
    assert second.headers["x-margin-cost-usd"] == "0.000000000"
    row = wait_for_row(server.db, second.headers["x-margin-request-id"])
    assert row["kind"] == "cache_hit" and row["cost_nanousd"] == 0 and row["saved_nanousd"] > 0


def test_ledger_and_report_match_the_api(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)  # a clean shutdown flushes every acknowledged row
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught
    assert "Application shutdown complete" in server.log.read_text()
    result = subprocess.run(
        [*margin_command(), "report", "--db", str(server.db), "--json"], capture_output=True, text=True, check=True
    )
    totals = json.loads(result.stdout)["totals"]
    assert totals["requests"] == len(server.usage)
    assert totals["input_tokens"] == sum(p for p, _ in server.usage)
    assert totals["output_tokens"] == sum(c for _, c in server.usage)
    assert Decimal(totals["cost_usd"]) > 0 and totals["unpriced_requests"] == 0
    assert totals["energy_j"] > 0 and totals["co2e_g"] > 0
    engine = sa.create_engine(f"sqlite:///{server.db}")
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "select count(*), count(distinct request_id), sum(cost_nanousd) from ledger"
        ).one()
    engine.dispose()
    assert rows[0] == rows[1] == len(server.usage)
    assert Decimal(rows[2]) / Decimal(10**9) == Decimal(totals["cost_usd"])


def wait_for_row(db: Path, request_id: str) -> dict[str, Any]:
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        for _ in range(100):
            with engine.connect() as connection:
                row = (
                    connection.execute(sa.text("select * from ledger where request_id = :r"), {"r": request_id})
                    .mappings()
                    .first()
                )
            if row is not None:
                return dict(row)
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise AssertionError(f"no ledger row for {request_id}")
