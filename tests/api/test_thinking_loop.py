"""A tool loop with extended thinking through a running `margin serve` whose `kind: anthropic` backend calls a
fake Anthropic upstream (tests/backends/anthropic_upstream.py) over real HTTP. With thinking on, that upstream
answers with a thinking and a redacted_thinking block and, as Anthropic does, refuses (400) the tool result's
turn unless the assistant turn before it starts with those exact blocks, signatures unchanged: margin must hand
them to the client (the openai SDK through `/v1/chat/completions`, LiteLLM's `thinking_blocks`; the anthropic
SDK through `/v1/messages`, Anthropic's blocks) and carry them back. Before: they were dropped both ways, and
turn 2 failed. Also: an OpenAI-compatible upstream is sent no thinking blocks, and their count and sizes are
bounded (400, nothing sent)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml

from margin.economics.money import from_nanousd
from tests.api.compat_upstream import Upstream as CompatUpstream
from tests.api.compat_upstream import compat_upstream
from tests.api.test_anthropic_backend import KEY_ENV, UPSTREAM_KEY, _key
from tests.backends.anthropic_upstream import (
    INPUT,
    THINKING_PIECES,
    THOUGHTS,
    USAGE,
    WEATHER,
    Upstream,
    anthropic_upstream,
)
from tests.helpers import margin_serve, wait_ledger_row

MODEL = "claude-haiku-4-5"
COMPAT = "compat"
TOOL: Any = {"name": "get_weather", "description": WEATHER["function"]["description"],
             "input_schema": WEATHER["function"]["parameters"]}  # fmt: skip
ASK: Any = [{"role": "user", "content": "weather in Paris?"}]
THINKING: Any = {"type": "enabled", "budget_tokens": 2048}
MAX_THINKING_BLOCKS, MAX_SIGNATURE_CHARS = 64, 65_536  # the README's bounds (margin.protocol's)


@dataclass
class Live:
    url: str
    db: Path
    upstream: Upstream
    compat: CompatUpstream
    chat: openai.OpenAI
    messages: anthropic.Anthropic
    key: str


def two_backends(claude_url: str, compat_url: str, **extra: Any) -> dict[str, Any]:
    """A config with an anthropic backend (MODEL) and an OpenAI-compatible one (COMPAT)."""
    claude = {"kind": "anthropic", "base_url": claude_url, "api_key_env": KEY_ENV, "timeout_s": 10}
    other = {"kind": "openai", "base_url": compat_url, "timeout_s": 10, "retries": {"attempts": 0}}
    models = {
        MODEL: {"backend": "claude"},
        COMPAT: {"backend": "other", "upstream_model": "plain", "price": {"input": "1", "output": "2"}},
    }
    return {"storage": {"flush_interval_ms": 10}, "backends": {"claude": claude, "other": other}, "models": models,
            **extra}  # fmt: skip


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("thinking")
    key = _key(folder / "ledger.db")
    with anthropic_upstream() as upstream, compat_upstream() as compat, pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, UPSTREAM_KEY)
        (folder / "margin.yaml").write_text(yaml.safe_dump(two_backends(upstream.url, compat.url)))
        serving = margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with serving as (url, _process):
            chat = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
            messages = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
            try:
                yield Live(url, folder / "ledger.db", upstream, compat, chat, messages, key)
            finally:
                chat.close()
                messages.close()


def _sent_back(live: Live) -> list[dict[str, Any]]:
    """The assistant turn the upstream received in turn 2: it must start with turn 1's thinking blocks."""
    turns = live.upstream.last["messages"]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"]
    content: list[dict[str, Any]] = turns[1]["content"]
    return content


def _check_turn_2(live: Live, request_id: str) -> None:
    assert _sent_back(live)[:2] == THOUGHTS  # exact: text, signature and data byte for byte
    assert [block["type"] for block in _sent_back(live)[2:]] == ["text", "tool_use"]
    row = wait_ledger_row(live.db, live.url, request_id)
    assert (row.http_status, row.backend, row.output_tokens) == (200, "claude", USAGE["output_tokens"])


def _chat_turn_2(live: Live, turn_1: dict[str, Any], stream: bool) -> tuple[str, str]:
    """Turn 2 of the chat tool loop: (its text, its request id)."""
    asked: Any = [*ASK, turn_1, {"role": "tool", "tool_call_id": "toolu_01A", "content": "sunny, 21 C"}]
    fields: Any = {"model": MODEL, "messages": asked, "tools": [WEATHER], "reasoning_effort": "low", "max_tokens": 4000}
    if not stream:
        raw = live.chat.chat.completions.with_raw_response.create(**fields)
        return raw.parse().choices[0].message.content or "", raw.headers["x-request-id"]
    with live.chat.chat.completions.with_streaming_response.create(**fields, stream=True) as response:
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
        return text, response.headers["x-request-id"]


def test_a_chat_tool_loop_with_reasoning_effort_carries_the_thinking_blocks(live: Live) -> None:
    first = live.chat.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], reasoning_effort="low", max_tokens=4000
    )
    message = first.choices[0].message
    extra = message.model_extra or {}
    assert extra["reasoning_content"] == "".join(THINKING_PIECES) and extra["thinking_blocks"] == THOUGHTS
    assert first.choices[0].finish_reason == "tool_calls" and message.tool_calls is not None
    turn_1 = message.model_dump(exclude_none=True)  # as a client sends it back: thinking_blocks included
    text, request_id = _chat_turn_2(live, turn_1, stream=False)
    assert text == "hello world"
    _check_turn_2(live, request_id)


def test_a_streamed_chat_tool_loop_rebuilds_the_thinking_blocks_from_the_deltas(live: Live) -> None:
    stream = live.chat.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], reasoning_effort="low", max_tokens=4000, stream=True
    )
    reasoning, text = "", ""
    blocks: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        extra = delta.model_extra or {}
        reasoning += extra.get("reasoning_content") or ""
        blocks += extra.get("thinking_blocks") or []
        calls += [call.model_dump(exclude_none=True) for call in delta.tool_calls or []]
        text += delta.content or ""
    assert reasoning == "".join(THINKING_PIECES) and blocks == THOUGHTS and text == "Let me look."
    function = {"name": "get_weather", "arguments": "".join(c["function"].get("arguments", "") for c in calls)}
    call = {"id": calls[0]["id"], "type": "function", "function": function}
    turn_1 = {"role": "assistant", "content": text, "tool_calls": [call], "thinking_blocks": blocks}
    answer, request_id = _chat_turn_2(live, turn_1, stream=True)
    assert answer == "hello world" and live.upstream.last["stream"] is True
    _check_turn_2(live, request_id)


def test_a_thinking_stream_keeps_margin_s_usage_chunk_closing_cost_and_ledger_row(live: Live) -> None:
    """The new deltas change nothing margin notes of a stream: the usage chunk, the closing cost comment (the
    row's $), and TTFT (a thinking delta is the first token: the row has one)."""
    body = {"model": MODEL, "messages": ASK, "reasoning_effort": "low", "max_tokens": 4000, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    headers = {"authorization": f"Bearer {live.key}"}
    answer = httpx.post(f"{live.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert answer.status_code == 200 and answer.text.endswith("data: [DONE]\n\n")
    row = wait_ledger_row(live.db, live.url, answer.headers["x-request-id"])
    assert f": x-margin-cost-usd={from_nanousd(row.cost_nanousd):.9f}" in answer.text and row.cost_nanousd > 0
    assert row.ttft_ms is not None and row.output_tokens == USAGE["output_tokens"]
    usage = [line for line in answer.text.split("\n\n") if '"choices":[]' in line and '"usage"' in line]
    assert len(usage) == 1 and f'"completion_tokens":{USAGE["output_tokens"]}' in usage[0]


def test_without_its_thinking_blocks_turn_2_is_the_upstream_s_400(live: Live) -> None:
    """What a client that drops them gets (every client before this change): the fake upstream is strict."""
    call = {"id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"P"}'}}
    turn_1 = {"role": "assistant", "content": "Let me look.", "tool_calls": [call]}
    with pytest.raises(openai.BadRequestError):
        _chat_turn_2(live, turn_1, stream=False)


def _messages_turn_2(live: Live, first: Any, stream: bool) -> tuple[Any, str]:
    (use,) = [block for block in first.content if block.type == "tool_use"]
    assert use.input == INPUT
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}
    answered: Any = [*ASK, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                     {"role": "user", "content": [result]}]  # fmt: skip
    fields: Any = {"model": MODEL, "max_tokens": 4096, "messages": answered, "tools": [TOOL], "thinking": THINKING}
    if not stream:
        raw = live.messages.messages.with_raw_response.create(**fields)
        return raw.parse(), raw.headers["x-request-id"]
    with live.messages.messages.stream(**fields) as events:
        return events.get_final_message(), events.response.headers["x-request-id"]


def _thoughts(message: Any) -> list[dict[str, Any]]:
    return [block.model_dump(exclude_none=True) for block in message.content if "thinking" in block.type]


def test_a_messages_tool_loop_with_thinking_carries_the_blocks(live: Live) -> None:
    first = live.messages.messages.create(model=MODEL, max_tokens=4096, messages=ASK, tools=[TOOL], thinking=THINKING)
    assert [block.type for block in first.content] == ["thinking", "redacted_thinking", "text", "tool_use"]
    assert _thoughts(first) == THOUGHTS and first.stop_reason == "tool_use"
    second, request_id = _messages_turn_2(live, first, stream=False)
    assert [block.type for block in second.content] == ["thinking", "redacted_thinking", "text"]
    _check_turn_2(live, request_id)


def test_a_streamed_messages_tool_loop_rebuilds_the_blocks_with_their_signatures(live: Live) -> None:
    with live.messages.messages.stream(
        model=MODEL, max_tokens=4096, messages=ASK, tools=[TOOL], thinking=THINKING
    ) as events:
        thinking = "".join(event.thinking for event in events if event.type == "thinking")
        first = events.get_final_message()
    assert thinking == "".join(THINKING_PIECES)  # the SDK's own thinking events, from the thinking deltas
    assert [block.type for block in first.content] == ["thinking", "redacted_thinking", "text", "tool_use"]
    assert _thoughts(first) == THOUGHTS  # the SDK's accumulator: the signature from signature_delta
    second, request_id = _messages_turn_2(live, first, stream=True)
    assert second.content[-1].type == "text" and second.content[-1].text == "hello world"
    _check_turn_2(live, request_id)


def test_an_openai_compatible_upstream_is_sent_no_thinking_blocks(live: Live) -> None:
    turn_1 = {"role": "assistant", "content": "Let me look.", "thinking_blocks": THOUGHTS, "reasoning_content": "r"}
    asked: Any = [*ASK, turn_1, {"role": "user", "content": "and tomorrow?"}]
    answer = live.chat.chat.completions.create(model=COMPAT, messages=asked)
    assert answer.choices[0].message.content == "hello there"
    sent = live.compat.last["messages"]
    assert sent[1] == {"role": "assistant", "content": "Let me look.", "reasoning_content": "r"}  # as before
    assert all("thinking_blocks" not in message for message in sent)


BAD = [
    ([THOUGHTS[1]] * (MAX_THINKING_BLOCKS + 1), "messages.1.thinking_blocks", "array_above_max_length"),
    ([{**THOUGHTS[0], "signature": "s" * (MAX_SIGNATURE_CHARS + 1)}], "messages.1.thinking_blocks.0.thinking.signature",
     None),
    ([{**THOUGHTS[0], "cache": {}}], "messages.1.thinking_blocks.0.thinking.cache", None),
]  # fmt: skip


@pytest.mark.parametrize("model", [MODEL, COMPAT])
@pytest.mark.parametrize(("blocks", "param", "code"), BAD)
def test_too_many_or_too_large_thinking_blocks_are_a_400_and_nothing_is_sent(
    live: Live, model: str, blocks: Any, param: str, code: str | None
) -> None:
    sent = len(live.upstream.bodies) + len(live.compat.bodies)
    asked: Any = [*ASK, {"role": "assistant", "content": "x", "thinking_blocks": blocks}, ASK[0]]
    with pytest.raises(openai.BadRequestError) as caught:
        live.chat.chat.completions.create(model=model, messages=asked)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param and (code is None or error["code"] == code)
    assert len(live.upstream.bodies) + len(live.compat.bodies) == sent


def test_too_many_thinking_blocks_through_messages_are_a_400(live: Live) -> None:
    turn: Any = {"role": "assistant", "content": [THOUGHTS[1]] * (MAX_THINKING_BLOCKS + 1)}
    with pytest.raises(anthropic.BadRequestError) as caught:
        live.messages.messages.create(model=MODEL, max_tokens=64, messages=[*ASK, turn, ASK[0]])
    assert "thinking_blocks" in str(caught.value)


@pytest.mark.parametrize("pii", ["block", "redact"])
def test_the_pii_guard_sends_thinking_blocks_back_unchanged(live: Live, pii: str) -> None:
    """A key whose policy blocks or redacts PII: the thinking blocks of turn 1 are the backend's own signed
    output, so the guard neither reads a signature as a secret (a refusal) nor rewrites the signed text (which
    Anthropic would refuse): the upstream receives them byte for byte. Before, `block` refused every such turn
    (400 pii_detected: the signature looked like a secret) and `redact` rewrote signature and text."""
    import base64

    from margin import keys
    from margin.ledger import db as ledger_db

    engine = ledger_db.make_sync_engine(f"sqlite:///{live.db}")
    try:
        _, key = keys.create_key(engine, keys.NewKey(f"guarded-{pii}", "t", {}, None, False, {"pii": pii}))
    finally:
        engine.dispose()
    signature = base64.b64encode(bytes(range(7, 256)) * 2).decode()  # as Anthropic's: long, random-looking base64
    blocks = [{"type": "thinking", "thinking": "They wrote from jane.doe@example.com; look it up.",
               "signature": signature}]  # fmt: skip
    call = {"id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"P"}'}}
    turn_1 = {"role": "assistant", "content": "Let me look.", "tool_calls": [call], "thinking_blocks": blocks}
    asked: Any = [*ASK, turn_1, {"role": "tool", "tool_call_id": "toolu_01A", "content": "sunny, 21 C"}]
    with openai.OpenAI(base_url=live.url + "/v1", api_key=key, max_retries=0) as client:
        answer = client.chat.completions.create(model=MODEL, messages=asked, reasoning_effort="low", max_tokens=4000)
    assert answer.choices[0].message.content  # not refused by the guard
    assert _sent_back(live)[0] == blocks[0]  # text and signature byte for byte
