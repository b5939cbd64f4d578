"""The `anthropic` backend end to end: a running `margin serve` whose backend calls a fake Anthropic Messages
API over real HTTP (tests/backends/anthropic_upstream.py, which keeps what it receives), the official openai
SDK as the client. A chat is answered as OpenAI answers it, JSON or streamed, tool calls included; Anthropic
receives the exact Messages body and its headers (the key from the environment as `x-api-key`); the ledger row
holds the whole prompt (cache reads and writes included) and its $ prices reads and writes at their own rates,
computed here from Anthropic's list prices; upstream 429/529 and a mid-stream `error` event end as OpenAI
errors. Before: `kind: anthropic` was an invalid config."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from margin import keys
from margin.economics.money import from_nanousd
from margin.ledger import db as ledger_db
from tests.backends.anthropic_upstream import INPUT, OVERFLOW, USAGE, WEATHER, Upstream, anthropic_upstream
from tests.helpers import margin_serve, wait_ledger_row

KEY_ENV = "MARGIN_TEST_ANTHROPIC_KEY"
UPSTREAM_KEY = "sk-ant-test-not-a-real-key"
PRICE = {"input": "1", "output": "2"}
# Anthropic's list prices, $ per million tokens (input, cache read, 5-minute cache write, output), as published
# for prompts under 200k tokens: written here, not read from genai-prices, so the row's $ is checked against them
LIST = {
    "claude-sonnet-4-5": (Decimal(3), Decimal("0.30"), Decimal("3.75"), Decimal(15)),
    "claude-haiku-4-5": (Decimal(1), Decimal("0.10"), Decimal("1.25"), Decimal(5)),
}
# a model priced in the config, cache writes included (`cache_write_input`): not genai-prices' numbers
CONFIGURED = {"input": "2", "output": "8", "cached_input": "0.2", "cache_write_input": "2.5"}
FAKES = ("thinker", "overloaded", "flaky", "limited", "rejecting", "overflowing", "midstream", "cut")


@dataclass
class Live:
    url: str
    db: Path
    upstream: Upstream
    client: openai.OpenAI
    rows: dict[str, Any] = field(default_factory=dict)

    def row(self, request_id: str) -> Any:
        return wait_ledger_row(self.db, self.url, request_id)


def _key(db: Path) -> str:
    url = f"sqlite:///{db}"
    ledger_db.upgrade(url)
    engine = ledger_db.make_sync_engine(url)
    _, key = keys.create_key(engine, keys.NewKey("user", "t", {}, None, False, None))
    engine.dispose()
    return key


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("anthropic")
    key = _key(folder / "ledger.db")
    with anthropic_upstream() as upstream, pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, UPSTREAM_KEY)
        backend = {"kind": "anthropic", "base_url": upstream.url, "api_key_env": KEY_ENV, "timeout_s": 10,
                   "retries": {"attempts": 1, "backoff_s": 0.01}}  # fmt: skip
        models: dict[str, Any] = {name: {"backend": "claude"} for name in LIST}
        models |= {name: {"backend": "claude", "upstream_model": name, "price": PRICE} for name in FAKES}
        models["configured"] = {"backend": "claude", "upstream_model": "claude-sonnet-4-5", "price": CONFIGURED}
        config = {"storage": {"flush_interval_ms": 10}, "backends": {"claude": backend}, "models": models}
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        serving = margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with serving as (url, _process):
            client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
            try:
                yield Live(url, folder / "ledger.db", upstream, client)
            finally:
                client.close()


def _expected_nanousd(model: str) -> int:
    fresh_rate, read_rate, write_rate, output_rate = LIST[model]
    reads, writes = USAGE["cache_read_input_tokens"], USAGE["cache_creation_input_tokens"]
    usd = (
        USAGE["input_tokens"] * fresh_rate
        + reads * read_rate
        + writes * write_rate
        + USAGE["output_tokens"] * output_rate
    ) / 1_000_000
    return int(usd * 10**9)


PROMPT = USAGE["input_tokens"] + USAGE["cache_read_input_tokens"] + USAGE["cache_creation_input_tokens"]


@pytest.mark.parametrize("model", list(LIST))
def test_a_json_chat_is_sent_as_messages_and_its_row_prices_cache_reads_and_writes(live: Live, model: str) -> None:
    raw = live.client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        max_tokens=50,
        temperature=0.2,
        stop=["END"],
        user="u-1",
    )
    answer = raw.parse()
    assert answer.object == "chat.completion" and answer.choices[0].message.content == "hello world"
    assert answer.choices[0].finish_reason == "stop"
    assert live.upstream.last == {
        "model": model,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "system": [{"type": "text", "text": "be brief"}],
        "temperature": 0.2,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
    }
    headers = live.upstream.headers[-1]
    assert (headers["x-api-key"], headers["anthropic-version"]) == (UPSTREAM_KEY, "2023-06-01")
    assert "authorization" not in headers  # the caller's margin key never leaves
    usage = answer.usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (PROMPT, USAGE["output_tokens"])
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 3000
    details = json.loads(raw.http_response.text)["usage"]["prompt_tokens_details"]
    assert details["cache_write_tokens"] == USAGE["cache_creation_input_tokens"]  # margin's: Anthropic's writes
    row = live.row(raw.headers["x-request-id"])
    assert (row.input_tokens, row.cached_tokens, row.output_tokens) == (PROMPT, 3000, USAGE["output_tokens"])
    assert (row.backend, row.cost_status, row.http_status) == ("claude", "priced", 200)
    assert row.cost_nanousd == _expected_nanousd(model)
    assert row.price_version.endswith(f"anthropic/{model}")
    assert Decimal(raw.headers["x-margin-cost-usd"]) == from_nanousd(row.cost_nanousd)


def test_a_config_price_with_a_cache_write_rate_prices_the_rows_cache_writes(live: Live) -> None:
    raw = live.client.chat.completions.with_raw_response.create(
        model="configured", messages=[{"role": "user", "content": "hi"}], max_tokens=50
    )
    assert live.upstream.last["model"] == "claude-sonnet-4-5"
    row = live.row(raw.headers["x-request-id"])
    # 21 fresh input tokens at $2/M, 3000 cache reads at $0.20/M, 1000 cache writes at $2.50/M, 9 output at $8/M
    usd = (21 * Decimal(2) + 3000 * Decimal("0.2") + 1000 * Decimal("2.5") + 9 * Decimal(8)) / 1_000_000
    assert usd == Decimal("0.003214")  # before: the writes at the input rate, $0.002714
    assert (row.cost_status, row.price_version) == ("priced", "config:config")
    assert row.cost_nanousd == 3_214_000 == int(usd * 10**9)
    assert Decimal(raw.headers["x-margin-cost-usd"]) == usd


def test_a_stream_is_openai_s_chunks_with_usage_and_its_row(live: Live) -> None:
    raw = live.client.chat.completions.with_raw_response.create(
        model="claude-haiku-4-5",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    assert live.upstream.last["stream"] is True and live.upstream.last["max_tokens"] == 4096
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello world"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT, USAGE["output_tokens"])
    row = live.row(raw.headers["x-request-id"])
    assert (row.stream, row.input_tokens, row.cached_tokens, row.output_tokens) == (True, PROMPT, 3000, 9)
    assert row.cost_nanousd == _expected_nanousd("claude-haiku-4-5")


def test_a_tool_call_round_trip(live: Live) -> None:
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = live.client.chat.completions.create(
        model="claude-haiku-4-5", messages=messages, tools=[WEATHER], tool_choice="required"
    )
    sent = live.upstream.last
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "input_schema": WEATHER["function"]["parameters"],
            "description": "The weather in a city",
        }
    ]
    assert sent["tool_choice"] == {"type": "any"}
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me look."
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id == "toolu_01A"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == INPUT
    messages += [choice.message.model_dump(exclude_none=True)]
    messages += [{"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    second = live.client.chat.completions.create(model="claude-haiku-4-5", messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == "hello world"
    assert live.upstream.last["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": INPUT},
        ]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A", "content": "sunny, 21 C"}]},
    ]  # fmt: skip


def test_a_streamed_tool_call_arrives_as_argument_deltas(live: Live) -> None:
    stream = live.client.chat.completions.create(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER], stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += delta.id or ""
            entry["name"] += (delta.function.name or "") if delta.function else ""
            entry["arguments"] += (delta.function.arguments or "") if delta.function else ""
        finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
    assert finish == "tool_calls"
    assert calls[0]["id"] == "toolu_01A" and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == INPUT


def test_thinking_is_not_shown_but_billed(live: Live) -> None:
    raw = live.client.chat.completions.with_raw_response.create(
        model="thinker", messages=[{"role": "user", "content": "hi"}], reasoning_effort="low", max_tokens=4000
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "hello world"
    assert live.upstream.last["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    row = live.row(raw.headers["x-request-id"])
    assert row.output_tokens == USAGE["output_tokens"]  # Anthropic's output count holds the thinking


def test_a_529_is_retried_and_an_overloaded_upstream_is_a_502(live: Live) -> None:
    answer = live.client.chat.completions.create(model="flaky", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "hello world" and live.upstream.tries["flaky"] == 2
    with pytest.raises(openai.APIStatusError) as caught:
        live.client.chat.completions.create(model="overloaded", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502 and live.upstream.tries["overloaded"] == 2
    assert "internal-host" not in str(caught.value.body)


def test_a_429_is_the_caller_s_429_with_retry_after_and_a_400_passes_through(live: Live) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        live.client.chat.completions.create(model="limited", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.response.headers["retry-after"] == "30" and live.upstream.tries["limited"] == 1
    assert caught.value.code == "rate_limit_error"
    with pytest.raises(openai.BadRequestError) as rejected:
        live.client.chat.completions.create(model="rejecting", messages=[{"role": "user", "content": "hi"}])
    assert rejected.value.code == "invalid_request_error" and "internal-host" not in str(rejected.value.body)


def test_an_upstream_context_overflow_reaches_clients_in_the_sentence_they_act_on(live: Live) -> None:
    """Anthropic's "prompt is too long: N tokens > M maximum" is the one refusal clients act on by its text (Claude
    Code compacts its conversation); margin withholds upstream text, so it answered "the upstream rejected the
    request (HTTP 400, code invalid_request_error)" and Claude Code could not compact. Now: the sentence, rebuilt
    from its numbers (nothing else of the upstream's text), OpenAI's code, and a row that bills nothing."""
    with pytest.raises(openai.BadRequestError) as caught:
        live.client.chat.completions.with_raw_response.create(
            model="overflowing", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "context_length_exceeded" and caught.value.body["message"] == OVERFLOW  # type: ignore[index]
    assert "internal-host" not in str(caught.value.body)
    row = live.row(caught.value.response.headers["x-request-id"])
    assert (row.http_status, row.error_code, row.cost_nanousd) == (400, "context_length_exceeded", 0)
    claude = anthropic.Anthropic(base_url=live.url, api_key=live.client.api_key, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as messages:
        claude.messages.create(model="overflowing", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    error = messages.value.body["error"]  # type: ignore[index]
    assert error == {"type": "invalid_request_error", "message": OVERFLOW}


@pytest.mark.parametrize(("model", "match"), [("midstream", "mid-stream"), ("cut", "before message_stop")])
def test_a_stream_that_fails_midway_ends_as_an_openai_error(live: Live, model: str, match: str) -> None:
    raw = live.client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = ""
    with pytest.raises(openai.APIError, match=match) as caught:
        for chunk in raw.parse():
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert text == "hello world" and "secret-host" not in str(caught.value)
    row = live.row(raw.headers["x-request-id"])
    code = "upstream_overloaded" if model == "midstream" else "upstream_bad_response"  # its event: overloaded_error
    assert (row.status, row.http_status, row.error_code) == ("upstream_error", 502, code)


def test_what_anthropic_cannot_do_is_refused_before_it_is_sent(live: Live) -> None:
    sent = len(live.upstream.bodies)
    with pytest.raises(openai.BadRequestError) as caught:
        live.client.chat.completions.create(model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}], n=2)
    assert caught.value.param == "n" and caught.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as schema:
        live.client.chat.completions.create(
            model="claude-haiku-4-5",
            messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_object"},  # json_schema maps (structured outputs); this does not
        )
    assert schema.value.param == "response_format"
    assert len(live.upstream.bodies) == sent


def test_admin_backends_shows_an_anthropic_backend_s_time_limits_and_retries(live: Live) -> None:
    """`/admin/backends` lists the time limits and retry policy of every hosted backend, not only `openai`'s."""
    import httpx

    engine = ledger_db.make_sync_engine(f"sqlite:///{live.db}")
    _, admin = keys.create_key(engine, keys.NewKey("ops", is_admin=True))
    engine.dispose()
    answer = httpx.get(f"{live.url}/admin/backends", headers={"authorization": f"Bearer {admin}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    (entry,) = [b for b in answer.json()["data"] if b["name"] == "claude"]
    assert entry["kind"] == "anthropic"
    assert entry["limits"]["timeout_s"] == 10
    assert entry["retries"]["attempts"] == 1


def test_a_pdf_from_the_responses_api_or_a_chat_reaches_anthropic_as_a_document(live: Live) -> None:
    """`input_file` (Responses) and a chat's `file` part holding a PDF: a base64 document block at Anthropic; before,
    a 400 on each."""
    pdf = "data:application/pdf;base64,JVBERi0x"
    document = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}}
    file: Any = {"type": "input_file", "file_data": pdf, "filename": "r.pdf"}
    live.client.responses.create(
        model="claude-haiku-4-5", input=[{"role": "user", "content": [{"type": "input_text", "text": "sum up"}, file]}]
    )
    assert live.upstream.last["messages"][0]["content"] == [{"type": "text", "text": "sum up"}, document]
    part: Any = {"type": "file", "file": {"filename": "r.pdf", "file_data": pdf}}
    live.client.chat.completions.create(model="claude-haiku-4-5", messages=[{"role": "user", "content": [part]}])
    assert live.upstream.last["messages"][0]["content"] == [document]
