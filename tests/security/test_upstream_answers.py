"""What a hostile OpenAI-compatible upstream answers, attacked through a running `margin serve` in front of the
fault upstream (`tests/fault_upstream.py`): a redirect, an error object under HTTP 200, a stream without one
event, usage with more cached tokens than prompt tokens. Each was let through before (an audit of 2026-12-05):
the redirect was followed with the caller's prompt, the error's text reached the caller as a 200 answer, the
empty stream was an `ok` answer of nothing, and the cached tokens priced the request below $0, refunding its
budget ($-0.9 a request at these prices; $-900 with 10^9 cached tokens)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.faults.conftest import FaultUpstream, fault_upstream
from tests.security.conftest import Served, ServeFactory
from tests.security.test_edge_contract import anthropic_shaped, openai_shaped
from tests.security.upstream import Script, recording_upstream, upstream_config
from tests.security.waiting import wait_for

__all__ = ["fault_upstream"]  # the module-scoped fixture, shared with the fault matrix

CHAT = "/v1/chat/completions"
PRICE = {"input": "1", "output": "1", "cached_input": "0.1"}  # $/1M tokens: cached tokens are cheaper
BUDGET = {"name": "all", "scope": {"kind": "global"}, "usd": "100", "period": "day"}
MODES = ["redirect,code=307", "redirect,code=302", "errorbody", "empty", "cached", "inflated", "deep", "deep,depth=200"]


@pytest.fixture
def gw(served: ServeFactory, fault_upstream: FaultUpstream) -> Iterator[Served]:
    limits = {"timeout_s": 5, "first_token_timeout_s": 3, "idle_timeout_s": 2, "region": "eu"}
    backends = {
        f"b{i}": {"kind": "openai", "base_url": fault_upstream.base(mode, "answers"), **limits}
        for i, mode in enumerate(MODES)
    }
    models = {mode: {"backend": f"b{i}", "price": PRICE} for i, mode in enumerate(MODES)}
    config = {"backends": backends, "models": models, "budgets": [BUDGET]}
    with served(config, keys={"admin": ["--admin"], "k": []}) as running:
        yield running


def ask(gw: Served, model: str, stream: bool, **extra: Any) -> tuple[int, str, dict[str, str], Any]:
    """One request; the client's status, body and headers, and the request's ledger row."""
    body = {"model": model, "messages": [{"role": "user", "content": "my private prompt"}], "stream": stream, **extra}
    with gw.client(gw.keys["k"], timeout=15) as client:
        answer = client.post(CHAT, json=body)
    request_id = answer.headers["x-margin-request-id"]
    wait_for(lambda: any(row.request_id == request_id for row in gw.rows()), "the request's row")
    rows = [row for row in gw.rows() if row.request_id == request_id]
    assert len(rows) == 1
    return answer.status_code, answer.text, dict(answer.headers), rows[0]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("mode", ["redirect,code=307", "redirect,code=302"])
def test_a_redirect_is_never_followed(gw: Served, fault_upstream: FaultUpstream, mode: str, stream: bool) -> None:
    """aiohttp followed up to 10 redirects: a 307 re-sent the caller's prompt to the `Location`'s host (any
    host: a metadata IP, an internal service, another jurisdiction) and its answer came back as a 200."""
    status, text, _, row = ask(gw, mode, stream)
    assert status == 502 and "upstream_error" in text, text[:300]
    assert (row.status, row.http_status, row.error_code) == ("upstream_error", 502, "upstream_error")
    assert fault_upstream.count("ok", "redirected") == 0  # nothing was sent where the upstream pointed


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_an_error_under_200_is_an_upstream_error(gw: Served, stream: bool) -> None:
    """JSON: the error object was the caller's 200 answer (its text, `sk-upstream-SECRET` included) and the row
    `ok`; a stream answered with it (a JSON body, no SSE event) was an empty 200 stream, row `ok`."""
    status, text, _, row = ask(gw, "errorbody", stream)
    assert status == 502 and "SECRET" not in text and "quota" not in text, text[:300]
    assert row.status == "upstream_error" and row.http_status == 502
    assert row.error_code == ("upstream_bad_response" if stream else "upstream_error")


def test_a_stream_without_events_is_not_an_answer(gw: Served) -> None:
    status, text, _, row = ask(gw, "empty", True)
    assert status == 502 and "upstream_bad_response" in text, text[:300]
    assert (row.status, row.error_code, row.output_tokens) == ("upstream_error", "upstream_bad_response", 0)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_cached_tokens_past_the_prompt_never_price_below_zero(gw: Served, stream: bool) -> None:
    """Usage of 5 prompt tokens of which 1,000,000 cached: (5 − 10^6) × $1 + 10^6 × $0.1 per 1M was −$0.9."""
    with gw.client(gw.keys["admin"]) as admin:
        spent_before = Decimal(admin.get("/admin/budgets").json()["data"][0]["spent"])
    status, text, headers, row = ask(gw, "cached", stream)
    assert status == 200, text[:300]
    assert (row.input_tokens, row.cached_tokens, row.output_tokens) == (5, 5, 3)  # at most the whole prompt cached
    assert row.cost_nanousd == 3_500  # 5 cached tokens at $0.1 and 3 output tokens at $1 per 1M
    cost = headers.get("x-margin-cost-usd") or text.split("x-margin-cost-usd=")[1].split()[0]
    assert Decimal(cost) == Decimal("0.0000035")
    with gw.client(gw.keys["admin"]) as admin:  # the budget is charged, never refunded
        wait_for(lambda: Decimal(admin.get("/admin/budgets").json()["data"][0]["spent"]) > spent_before, "spend")


def spent(gw: Served) -> Decimal:
    with gw.client(gw.keys["admin"]) as admin:
        return Decimal(admin.get("/admin/budgets").json()["data"][0]["spent"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_inflated_usage_is_held_at_what_the_request_could_use(gw: Served, stream: bool) -> None:
    """10^9 prompt and 10^9 completion tokens reported for a 3-word answer to a 3-word prompt with
    `max_tokens: 16`: both were priced as reported, $2,000 settled against the $100 budget that had
    reserved $0.00003 (spent $2,000 of $100). Now output is held at the 16 asked for and input at the request's
    JSON bytes, the row says `clamped`, and the budget is charged exactly the row's cost."""
    before = spent(gw)
    status, text, headers, row = ask(gw, "inflated", stream, max_tokens=16)
    assert status == 200, text[:300]
    assert row.output_tokens == 16 and 0 < row.input_tokens < 200 and row.usage_source == "clamped"
    assert row.cost_nanousd == (row.input_tokens + 16) * 1_000  # $1 per 1M tokens
    cost = headers.get("x-margin-cost-usd") or text.split("x-margin-cost-usd=")[1].split()[0]
    assert Decimal(cost) == Decimal(row.cost_nanousd) / 10**9  # what the caller is told is what is charged
    wait_for(lambda: spent(gw) - before == Decimal(row.cost_nanousd) / 10**9, "the settlement")
    assert spent(gw) < Decimal(1)


def test_an_answer_nested_past_the_bound_is_an_upstream_error(gw: Served) -> None:
    """A value nested 300 levels deep in the answer's top level, message (delta) and usage (orjson parses up
    to 1,024 levels but writes 254): chat passed it to the caller as it came (JSON and SSE), a translation
    dropped it (a later one that copied it would have failed where it wrote it). Now each is a 502 in the
    endpoint's error shape, before any event is sent, and the row is an upstream error. One gateway for the
    six cases."""
    for path, stream in itertools.product([CHAT, "/v1/responses", "/v1/messages"], [False, True]):
        # two backends: six upstream errors in a row on one would open its circuit
        body: dict[str, Any] = {"model": "deep,depth=200" if path == "/v1/messages" else "deep", "stream": stream}
        if path == "/v1/responses":
            body["input"] = "my private prompt"
        else:
            body |= {"messages": [{"role": "user", "content": "my private prompt"}], "max_tokens": 16}
        with gw.client(gw.keys["k"], timeout=15) as client:
            answer = client.post(path, json=body)
        assert answer.status_code == 502 and "[[[" not in answer.text, (path, stream, answer.text[:300])
        shaped = anthropic_shaped if path == "/v1/messages" else openai_shaped
        assert shaped(answer.json()), answer.text[:300]
        request_id = answer.headers["x-margin-request-id"]
        wait_for(lambda: any(row.request_id == request_id for row in gw.rows()), "the request's row")  # noqa: B023
        (row,) = [row for row in gw.rows() if row.request_id == request_id]
        assert (row.status, row.http_status, row.error_code) == ("upstream_error", 502, "upstream_bad_response")


def test_tool_arguments_nested_past_the_bound_are_kept_whole_in_a_messages_answer(served: ServeFactory) -> None:
    """/v1/messages turns a tool call's arguments (a string) into a tool_use block's `input` object: arguments
    nested 300 levels deep parsed (orjson allows 1,024) and the answer failed where it was written (a 500).
    Now they are kept whole as a string, like arguments that are not a JSON object."""
    deep = '{"a":' * 300 + "1" + "}" * 300
    body = {"model": "up", "max_tokens": 16, "messages": [{"role": "user", "content": "send it"}]}
    script = Script(tool_arguments=[deep])
    with recording_upstream(script) as upstream, served(upstream_config(upstream)) as gw, gw.client() as client:
        answer = client.post("/v1/messages", json=body)
    assert answer.status_code == 200, answer.text[:300]
    (block,) = [b for b in answer.json()["content"] if b["type"] == "tool_use"]
    assert block["input"] == {"arguments": deep}
