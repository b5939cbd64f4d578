"""Interleaved thinking through a running `margin serve`, over real HTTP: an anthropic backend on the fake
Anthropic upstream (tests/backends/anthropic_upstream.py, model `interleaved`) answers thinking, a tool call,
thinking again, then text. A `/v1/messages` client (the anthropic SDK) gets the four blocks in that order, whole
and streamed; a `/v1/responses` client (the openai SDK) gets its output items in that order (reasoning,
function_call, reasoning, message), whole and streamed; a chat client gets the deltas in that order in a stream,
and a whole answer's `block_order` saying it (a chat message's fields cannot). Before: a whole answer was laid out
with both thinking blocks first (thinking, thinking, text, tool_use); streams already kept the order."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
import yaml

from margin.interleaving import block_order, in_order
from margin.responses_reasoning import decode
from tests.api.test_anthropic_backend import _key
from tests.backends.anthropic_upstream import INPUT, INTERLEAVED, anthropic_upstream
from tests.helpers import margin_serve

KEY_ENV = "MARGIN_TEST_INTERLEAVED_KEY"
MODEL = "claude-interleaved"
ORDER = ["thinking", "tool_use", "thinking", "text"]
ASK: Any = [{"role": "user", "content": "weather in Paris? then say hello"}]
TOOL: Any = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
FUNCTION: Any = {"type": "function", "name": "get_weather", "parameters": TOOL["input_schema"]}
CHAT_TOOL: Any = {"type": "function", "function": {"name": "get_weather", "parameters": TOOL["input_schema"]}}
THOUGHTS = [block for block in INTERLEAVED if block["type"] == "thinking"]


@dataclass
class Live:
    client: openai.OpenAI
    claude: anthropic.Anthropic


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("interleaved")
    key = _key(folder / "ledger.db")
    with anthropic_upstream() as upstream, pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, "sk-ant-test")
        claude = {"kind": "anthropic", "base_url": upstream.url, "api_key_env": KEY_ENV, "timeout_s": 10}
        config = {"storage": {"flush_interval_ms": 10}, "backends": {"claude": claude},
                  "models": {MODEL: {"backend": "claude", "upstream_model": "interleaved",
                                     "price": {"input": "1", "output": "2"}}}}  # fmt: skip
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        serving = margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with (
            serving as (url, _process),
            openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client,
            anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as messages,
        ):
            yield Live(client, messages)


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
