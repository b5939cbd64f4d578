"""Interleaved thinking through a running `margin serve`, over real HTTP: an anthropic backend on the fake
Anthropic upstream (tests/backends/anthropic_upstream.py, model `interleaved`) answers thinking, a tool call,
thinking again, then text. A `/v1/messages` client (the anthropic SDK) gets the four blocks in that order, whole
and streamed; a `/v1/responses` client (the openai SDK) gets its output items in that order (reasoning,
function_call, reasoning, message), whole and streamed; a chat client gets the deltas in that order in a stream,
and a whole answer's `block_order` saying it (a chat message's fields cannot). Before: a whole answer was laid out
with both thinking blocks first (thinking, thinking, text, tool_use); streams already kept the order.

Sent back: turn 2 of a tool loop, with thinking on, sends the answer back with the tool's result. As Anthropic does
with interleaved thinking, the fake upstream refuses (400) the turn unless the assistant turn comes back whole,
each block in its place, signatures byte for byte. A chat client (sending back `message.model_dump()`, whose
`block_order` says the order), a Responses client (sending back the output items, or with `previous_response_id`)
and a Messages client (sending back the content blocks) each get turn 2 answered, and the upstream received the
blocks in their order. Before: the turn went back as thinking, thinking, text, tool_use, and turn 2 was the
upstream's 400. A hostile `block_order` is a 400 naming it: nothing sent upstream, no ledger row."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from margin.interleaving import block_order, in_order
from margin.responses_reasoning import decode
from tests.api.test_anthropic_backend import _key
from tests.backends.anthropic_upstream import INPUT, INTERLEAVED, Upstream, anthropic_upstream
from tests.helpers import ledger_rows, margin_serve, wait_ledger_row

KEY_ENV = "MARGIN_TEST_INTERLEAVED_KEY"
MODEL = "claude-interleaved"
ORDER = ["thinking", "tool_use", "thinking", "text"]
ASK: Any = [{"role": "user", "content": "weather in Paris? then say hello"}]
TOOL: Any = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
FUNCTION: Any = {"type": "function", "name": "get_weather", "parameters": TOOL["input_schema"]}
CHAT_TOOL: Any = {"type": "function", "function": {"name": "get_weather", "parameters": TOOL["input_schema"]}}
THOUGHTS = [block for block in INTERLEAVED if block["type"] == "thinking"]
CALL_ID = INTERLEAVED[1]["id"]


@dataclass
class Live:
    client: openai.OpenAI
    claude: anthropic.Anthropic
    url: str
    db: Path
    upstream: Upstream


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("interleaved")
    key = _key(folder / "ledger.db")
    with anthropic_upstream() as upstream, pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, "sk-ant-test")
        claude = {"kind": "anthropic", "base_url": upstream.url, "api_key_env": KEY_ENV, "timeout_s": 10}
        config = {"storage": {"flush_interval_ms": 10}, "backends": {"claude": claude}, "responses": {"store": True},
                  "models": {MODEL: {"backend": "claude", "upstream_model": "interleaved",
                                     "price": {"input": "1", "output": "2"}}}}  # fmt: skip
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        serving = margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with (
            serving as (url, _process),
            openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client,
            anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as messages,
        ):
            yield Live(client, messages, url, folder / "ledger.db", upstream)


def _blocks(content: list[Any]) -> list[dict[str, Any]]:
    return [block.model_dump(exclude_none=True) for block in content]


def _check_message(blocks: list[dict[str, Any]]) -> None:
    assert [block["type"] for block in blocks] == ORDER
    assert [blocks[0], blocks[2]] == THOUGHTS  # each block as it came, its signature included
    assert (blocks[1]["id"], blocks[1]["input"], blocks[3]["text"]) == ("toolu_01I", INPUT, "hello world")


def test_a_messages_client_gets_the_blocks_in_order(live: Live) -> None:
    message = live.claude.messages.create(model=MODEL, max_tokens=4000, messages=ASK, tools=[TOOL])
    _check_message(_blocks(message.content))


def test_a_streaming_messages_client_gets_the_blocks_in_order(live: Live) -> None:
    with live.claude.messages.stream(model=MODEL, max_tokens=4000, messages=ASK, tools=[TOOL]) as stream:
        starts = [event.content_block.type for event in stream if event.type == "content_block_start"]
        final = stream.get_final_message()
    assert starts == ORDER
    _check_message(_blocks(final.content))


def _check_output(output: list[dict[str, Any]]) -> None:
    assert [item["type"] for item in output] == ["reasoning", "function_call", "reasoning", "message"]
    assert [decode(output[0]["encrypted_content"]), decode(output[2]["encrypted_content"])] == THOUGHTS
    assert [output[0]["content"][0]["text"], output[2]["content"][0]["text"]] == [t["thinking"] for t in THOUGHTS]
    assert (output[1]["call_id"], output[3]["content"][0]["text"]) == ("toolu_01I", "hello world")
    assert len({item["id"] for item in output}) == 4


def test_a_responses_client_gets_the_items_in_order(live: Live) -> None:
    response = live.client.responses.create(model=MODEL, input=ASK, tools=[FUNCTION], store=False)
    _check_output([item.model_dump(exclude_none=True) for item in response.output])


def test_a_streaming_responses_client_gets_the_items_in_order(live: Live) -> None:
    with live.client.responses.stream(model=MODEL, input=ASK, tools=[FUNCTION], store=False) as stream:
        done = [event.item.type for event in stream if event.type == "response.output_item.done"]
        final = stream.get_final_response()
    assert done == ["reasoning", "function_call", "reasoning", "message"]
    _check_output([item.model_dump(exclude_none=True) for item in final.output])


def test_a_chat_client_gets_the_order_streamed_and_in_block_order(live: Live) -> None:
    whole = live.client.chat.completions.create(model=MODEL, messages=ASK, tools=[CHAT_TOOL])
    message = whole.choices[0].message.model_dump()
    assert message["thinking_blocks"] == THOUGHTS and message["content"] == "hello world"
    assert message["block_order"] == [{"type": "thinking"}, {"type": "tool_use"}, {"type": "thinking"},
                                      {"type": "text", "chars": 11}]  # fmt: skip
    kinds: list[str] = []
    for chunk in live.client.chat.completions.create(model=MODEL, messages=ASK, tools=[CHAT_TOOL], stream=True):
        delta = chunk.choices[0].delta.model_dump(exclude_none=True) if chunk.choices else {}
        for kind in ("reasoning_content", "thinking_blocks", "tool_calls", "content"):
            if delta.get(kind) and (not kinds or kinds[-1] != kind):
                kinds.append(kind)
    assert kinds == ["reasoning_content", "thinking_blocks", "tool_calls", "reasoning_content", "thinking_blocks",
                     "content"]  # fmt: skip


def test_a_block_order_that_does_not_account_for_the_message_is_not_used() -> None:
    blocks = [{"type": "thinking", "thinking": "a", "signature": "s"}, {"type": "redacted_thinking", "data": "d"}]
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    order = [{"type": "thinking"}, {"type": "text", "chars": 3}, {"type": "tool_use"}, {"type": "thinking"},
             {"type": "text", "chars": 2}]  # fmt: skip
    message: dict[str, Any] = {"content": "abcde", "thinking_blocks": blocks, "tool_calls": [call]}
    message["block_order"] = order
    assert in_order(message) == [("thinking", 0), ("text", "abc"), ("tool_use", 0), ("thinking", 1), ("text", "de")]
    # content rewritten (the guard redacted it): whole, where its first text block was
    assert in_order({**message, "content": "<EMAIL_1>"}) == [
        ("thinking", 0), ("text", "<EMAIL_1>"), ("tool_use", 0), ("thinking", 1),
    ]  # fmt: skip
    for wrong in (order[1:], [*order, {"type": "tool_use"}], [*order[:4], {"type": "text", "chars": -1}],
                  [*order[:4], {"type": "image"}], [*order[:4], "text"], {"type": "text"}, []):  # fmt: skip
        assert in_order({**message, "block_order": wrong}) is None
    no_text = [order[0], order[2], order[3]]
    assert in_order({**message, "block_order": no_text}) is None  # content that no text entry accounts for
    assert block_order([("thinking", 0), ("text", 2), ("tool_use", 0)]) is None  # thinking first: no order needed


def _check_turn_2(live: Live, request_id: str) -> None:
    """What the upstream received in turn 2: the assistant turn whole, in its order; and the turn's ledger row."""
    turns = live.upstream.last["messages"]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == INTERLEAVED  # thinking, tool_use, thinking, text: each byte for byte
    assert turns[2]["content"][0]["tool_use_id"] == CALL_ID
    assert live.upstream.last["thinking"]["type"] == "enabled"  # the upstream checked the order (it refuses)
    row = wait_ledger_row(live.db, live.url, request_id)
    assert (row.http_status, row.backend, row.model) == (200, "claude", MODEL)


def _chat_turn_2(live: Live, turn_1: dict[str, Any]) -> tuple[Any, str]:
    asked: Any = [*ASK, turn_1, {"role": "tool", "tool_call_id": CALL_ID, "content": "sunny, 21 C"}]
    raw = live.client.chat.completions.with_raw_response.create(
        model=MODEL, messages=asked, tools=[CHAT_TOOL], reasoning_effort="low", max_tokens=4000
    )
    return raw.parse(), raw.headers["x-request-id"]


def test_a_chat_tool_loop_sends_an_interleaved_turn_back_in_its_order(live: Live) -> None:
    first = live.client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[CHAT_TOOL], reasoning_effort="low", max_tokens=4000
    )
    turn_1 = first.choices[0].message.model_dump()  # as a client sends it back: block_order, thinking_blocks too
    assert [entry["type"] for entry in turn_1["block_order"]] == ["thinking", "tool_use", "thinking", "text"]
    second, request_id = _chat_turn_2(live, turn_1)
    assert second.choices[0].message.content == "hello world"
    _check_turn_2(live, request_id)


def test_a_responses_tool_loop_sends_the_output_items_back_in_their_order(live: Live) -> None:
    fields: Any = {"model": MODEL, "tools": [FUNCTION], "store": False, "reasoning": {"effort": "low"},
                   "max_output_tokens": 4000}  # fmt: skip
    first = live.client.responses.create(input=ASK, **fields)
    items = [item.model_dump(exclude_none=True) for item in first.output]
    assert [item["type"] for item in items] == ["reasoning", "function_call", "reasoning", "message"]
    result: Any = {"type": "function_call_output", "call_id": CALL_ID, "output": "sunny, 21 C"}
    raw = live.client.responses.with_raw_response.create(input=[*ASK, *items, result], **fields)
    assert raw.parse().output_text == "hello world"
    _check_turn_2(live, raw.headers["x-request-id"])


def test_previous_response_id_sends_the_stored_items_back_in_their_order(live: Live) -> None:
    fields: Any = {"model": MODEL, "tools": [FUNCTION], "reasoning": {"effort": "low"}, "max_output_tokens": 4000}
    first = live.client.responses.create(input=ASK, store=True, **fields)
    result: Any = [{"type": "function_call_output", "call_id": CALL_ID, "output": "sunny, 21 C"}]
    raw = live.client.responses.with_raw_response.create(input=result, previous_response_id=first.id, **fields)
    assert raw.parse().output_text == "hello world"
    _check_turn_2(live, raw.headers["x-request-id"])


def test_a_messages_tool_loop_sends_the_blocks_back_in_their_order(live: Live) -> None:
    fields: Any = {"model": MODEL, "max_tokens": 4096, "tools": [TOOL],
                   "thinking": {"type": "enabled", "budget_tokens": 2048}}  # fmt: skip
    first = live.claude.messages.create(messages=ASK, **fields)
    blocks = [block.model_dump(exclude_none=True) for block in first.content]
    assert [block["type"] for block in blocks] == ["thinking", "tool_use", "thinking", "text"]
    result = {"type": "tool_result", "tool_use_id": CALL_ID, "content": "sunny, 21 C"}
    answered: Any = [*ASK, {"role": "assistant", "content": blocks}, {"role": "user", "content": [result]}]
    raw = live.claude.messages.with_raw_response.create(messages=answered, **fields)
    assert [block.type for block in raw.parse().content][-1] == "text"
    _check_turn_2(live, raw.headers["x-request-id"])


HOSTILE = [
    ([{"type": "thinking"}] * 1025, "messages.1.block_order"),
    ([{"type": "text", "chars": "11"}], "messages.1.block_order.0.text.chars"),
    ([{"type": "thinking", "signature": "forged"}], "messages.1.block_order.0.thinking.signature"),
    ([{"type": "redacted_thinking"}], "messages.1.block_order.0"),
    ("thinking", "messages.1.block_order"),
]


@pytest.mark.parametrize(("order", "param"), HOSTILE)
def test_a_hostile_block_order_is_a_400_naming_it_with_nothing_sent_and_no_row(
    live: Live, order: Any, param: str
) -> None:
    sent = len(live.upstream.bodies)
    turn: Any = {"role": "assistant", "content": "x", "thinking_blocks": [INTERLEAVED[0]], "block_order": order}
    with pytest.raises(openai.BadRequestError) as caught:
        live.client.chat.completions.create(model=MODEL, messages=[*ASK, turn, *ASK])
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param, error
    assert len(live.upstream.bodies) == sent  # nothing reached the upstream
    later = live.client.chat.completions.with_raw_response.create(model=MODEL, messages=ASK)
    wait_ledger_row(live.db, live.url, later.headers["x-request-id"])  # written after the 400's would have been
    assert ledger_rows(live.db, caught.value.response.headers["x-request-id"]) == 0


def test_a_block_order_on_a_user_message_is_a_400(live: Live) -> None:
    sent = len(live.upstream.bodies)
    asked: Any = [{**ASK[0], "block_order": [{"type": "text", "chars": 32}]}]
    with pytest.raises(openai.BadRequestError) as caught:
        live.client.chat.completions.create(model=MODEL, messages=asked)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "messages.0.block_order"
    assert len(live.upstream.bodies) == sent
