"""Extended thinking carried through margin, without a network: an assistant message's `thinking_blocks` (bounded
at parse time) become the first blocks of its Anthropic turn, signatures byte for byte, and are left out for an
OpenAI-compatible upstream; Anthropic's thinking comes back in LiteLLM's shape (whole and streamed), and
`/v1/messages` writes it as Anthropic's thinking blocks and events again."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from margin.api.messages_out import MessageEvents, from_chat
from margin.backend_config import AnthropicBackendConfig, OpenAIBackendConfig
from margin.backends.anthropic import AnthropicBackend
from margin.backends.anthropic_response import Translator, completion
from margin.backends.openai_compat import OpenAIBackend
from margin.errors import InvalidRequest
from margin.messages import parse_messages
from margin.parsing import parse_request
from margin.protocol import MAX_SIGNATURE_CHARS, MAX_THINKING_BLOCKS, Endpoint
from margin.types import Call
from tests.api.test_messages_translation import _events
from tests.backends.anthropic_upstream import REDACTED, SIGNATURE, THINKING_PIECES, THOUGHTS, WEATHER, events, message

CALL = {"id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
THOUGHT = "".join(THINKING_PIECES)


def _loop(blocks: Any = THOUGHTS, **assistant: Any) -> list[dict[str, Any]]:
    """A tool loop's second turn: the assistant's tool call sent back with its thinking blocks."""
    turn = {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL], "thinking_blocks": blocks}
    return [{"role": "user", "content": "weather in Paris?"}, {**turn, **assistant},
            {"role": "tool", "tool_call_id": "toolu_01A", "content": "sunny"}]  # fmt: skip


def _call(**body: Any) -> Call:
    data = {"model": "claude", "messages": _loop(), "tools": [WEATHER], **body}
    return Call(Endpoint.CHAT, parse_request(Endpoint.CHAT, data), data, "claude", "claude-haiku-4-5", "r1")


def _to_anthropic(**body: Any) -> dict[str, Any]:
    _, data = AnthropicBackend("claude", AnthropicBackendConfig())._request(_call(**body), stream=False)
    sent: dict[str, Any] = orjson.loads(data)
    return sent


def test_thinking_blocks_open_the_assistant_turn_byte_for_byte() -> None:
    sent = _to_anthropic(reasoning_effort="low", max_tokens=4000)
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": [*THOUGHTS, {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}}],
    }  # fmt: skip
    assert sent["messages"][1]["content"][0]["signature"] == SIGNATURE
    assert sent["messages"][1]["content"][1]["data"] == REDACTED


def test_reasoning_content_cache_control_and_a_thinking_block_without_signature_are_left_out() -> None:
    unsigned = [{"type": "thinking", "thinking": "from another upstream", "signature": ""},
                {**THOUGHTS[1], "cache_control": {"type": "ephemeral"}}]  # fmt: skip
    sent = _to_anthropic(messages=_loop(unsigned, reasoning_content="ignored"))
    assert sent["messages"][1]["content"][0] == THOUGHTS[1]
    assert "ignored" not in orjson.dumps(sent).decode()


def test_only_an_assistant_message_holds_thinking_blocks() -> None:
    user = {"role": "user", "content": "x", "thinking_blocks": THOUGHTS}
    with pytest.raises(InvalidRequest) as caught:
        _to_anthropic(messages=[user])
    assert caught.value.param == "messages[0].thinking_blocks"


def test_an_openai_compatible_upstream_is_sent_no_thinking_blocks() -> None:
    backend = OpenAIBackend("up", OpenAIBackendConfig(base_url="http://127.0.0.1:1/v1"))
    call = _call()
    sent = orjson.loads(backend._body(call, stream=False))
    assert [sorted(m) for m in sent["messages"]] == [
        ["content", "role"], ["content", "role", "tool_calls"], ["content", "role", "tool_call_id"]
    ]  # fmt: skip
    assert "thinking_blocks" in call.raw["messages"][1]  # the request itself is left as it came
    plain = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    same = Call(Endpoint.CHAT, parse_request(Endpoint.CHAT, plain), plain, "up", "m", "r2")
    assert orjson.loads(backend._body(same, stream=False))["messages"] == plain["messages"]


def test_an_openai_compatible_upstream_that_takes_thinking_blocks_is_sent_them() -> None:
    """`thinking_blocks: true` (a LiteLLM proxy in front of Claude): the blocks go on, byte for byte."""
    config = OpenAIBackendConfig(base_url="http://127.0.0.1:1/v1", thinking_blocks=True)
    sent = orjson.loads(OpenAIBackend("up", config)._body(_call(), stream=False))
    assert sent["messages"][1]["thinking_blocks"] == THOUGHTS


SIZES = [
    ([THOUGHTS[0]] * (MAX_THINKING_BLOCKS + 1), "messages.1.thinking_blocks"),
    (
        [{**THOUGHTS[0], "signature": "s" * (MAX_SIGNATURE_CHARS + 1)}],
        "messages.1.thinking_blocks.0.thinking.signature",
    ),
    ([{**THOUGHTS[0], "extra": 1}], "messages.1.thinking_blocks.0.thinking.extra"),
    ([{"type": "redacted_thinking", "data": ""}], "messages.1.thinking_blocks.0.redacted_thinking.data"),
    ([{"type": "thinking", "thinking": "t"}], "messages.1.thinking_blocks.0.thinking.signature"),
    ([{"type": "image", "data": "x"}], "messages.1.thinking_blocks.0"),
    ("not a list", "messages.1.thinking_blocks"),
]


@pytest.mark.parametrize(("blocks", "param"), SIZES)
def test_thinking_blocks_are_bounded_at_parse_time(blocks: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(Endpoint.CHAT, {"model": "m", "messages": _loop(blocks)})
    assert caught.value.param == param, caught.value.message


def test_a_whole_answer_carries_its_thinking_in_litellm_s_shape() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "thinking": {"type": "enabled"}}
    payload, text, _ = completion(_call(), message(body), "claude")
    reply = payload["choices"][0]["message"]
    assert text == reply["content"] == "hello world"
    assert reply["reasoning_content"] == THOUGHT and reply["thinking_blocks"] == THOUGHTS


def test_a_stream_delivers_reasoning_deltas_and_each_block_whole_when_it_ends() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "thinking": {"type": "enabled"},
            "tools": [{"name": "get_weather"}]}  # fmt: skip
    translator = Translator(_call(stream=True), "claude")
    chunks = [chunk for event in events(body) for chunk in translator.event(orjson.loads(orjson.dumps(event)))]
    deltas = [c.payload["choices"][0]["delta"] for c in chunks if c.payload["choices"]]
    assert deltas[1:5] == [
        {"reasoning_content": THINKING_PIECES[0]},
        {"reasoning_content": THINKING_PIECES[1]},
        {"thinking_blocks": [THOUGHTS[0]]},
        {"thinking_blocks": [THOUGHTS[1]]},
    ]
    assert deltas[5] == {"content": "Let me look."} and "".join(c.text for c in chunks) == "Let me look."
    assert "".join(c.generated() for c in chunks[:2]) == THINKING_PIECES[0]  # a thinking delta is the first token


def test_messages_answers_start_with_the_thinking_blocks() -> None:
    request = parse_messages({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    chat = {"choices": [{"message": {"content": "hi", "reasoning_content": THOUGHT, "thinking_blocks": THOUGHTS},
                         "finish_reason": "stop"}]}  # fmt: skip
    assert from_chat(chat, request, "r")["content"] == [*THOUGHTS, {"type": "text", "text": "hi"}]
    reasoning_only = {"choices": [{"message": {"content": "hi", "reasoning_content": "why"}}]}
    assert from_chat(reasoning_only, request, "r")["content"][0] == {"type": "thinking", "thinking": "why",
                                                                      "signature": ""}  # fmt: skip


def test_messages_stream_thinking_then_signature_then_a_redacted_block_in_anthropic_s_order() -> None:
    request = parse_messages({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    stream = MessageEvents(request, "r")
    deltas = [{"role": "assistant", "content": ""}, {"reasoning_content": THINKING_PIECES[0]},
              {"reasoning_content": THINKING_PIECES[1]}, {"thinking_blocks": [THOUGHTS[0]]},
              {"thinking_blocks": [THOUGHTS[1]]}, {"content": "hi"}]  # fmt: skip
    chunks = [{"model": "m", "choices": [{"index": 0, "delta": delta}]} for delta in deltas]
    got = _events(stream.start() + b"".join(stream.chunk(chunk) for chunk in chunks) + stream.end())
    assert [(kind, data.get("index"), (data.get("delta") or data.get("content_block") or {}).get("type"))
            for kind, data in got[1:9]] == [
        ("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"), ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0, None), ("content_block_start", 1, "redacted_thinking"),
        ("content_block_stop", 1, None), ("content_block_start", 2, "text"),
    ]  # fmt: skip
    assert got[4][1]["delta"]["signature"] == SIGNATURE and got[6][1]["content_block"] == THOUGHTS[1]


def test_a_later_signature_delta_replaces_an_earlier_one() -> None:
    """As Anthropic's SDKs rebuild a block (the signature is set, not appended): two signature deltas leave the
    last one."""
    translator = Translator(_call(stream=True), "claude")
    start = {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    steps = [
        next(events(body)),  # message_start
        start,
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hm"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "first"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "second"}},
        {"type": "content_block_stop", "index": 0},
    ]
    chunks = [chunk for step in steps for chunk in translator.event(step)]
    (block,) = chunks[-1].payload["choices"][0]["delta"]["thinking_blocks"]
    assert block == {"type": "thinking", "thinking": "hm", "signature": "second"}


def test_thinking_blocks_none_of_which_is_whole_leave_the_reasoning_text_to_messages() -> None:
    """An upstream's `thinking_blocks` without a usable block (a LiteLLM upstream's signature None): the
    Messages answer's thinking comes from `reasoning_content`, not nowhere."""
    request = parse_messages({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    broken = [{"type": "thinking", "thinking": "why", "signature": None}]
    chat = {"choices": [{"message": {"content": "hi", "reasoning_content": "why", "thinking_blocks": broken}}]}
    assert from_chat(chat, request, "r")["content"][0] == {"type": "thinking", "thinking": "why", "signature": ""}
