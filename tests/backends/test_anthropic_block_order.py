"""An interleaved answer sent back, without a network: an assistant message's `block_order` (margin.interleaving)
lays its Anthropic turn out in the answer's own order (thinking, tool_use, thinking, text), thinking blocks byte
for byte; one that does not account for the message keeps the old order (thinking, text, tool calls). The field
is bounded at parse time (a 400 naming it), held by assistant messages only, and left out, with the thinking
blocks, for an OpenAI-compatible upstream. The Responses and Messages translations give their interleaved
assistant turns one. Before: `block_order` was an unchecked extra field that an anthropic backend ignored."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from margin.backend_config import AnthropicBackendConfig, OpenAIBackendConfig
from margin.backends.anthropic import AnthropicBackend
from margin.backends.openai_compat import OpenAIBackend
from margin.errors import InvalidRequest
from margin.messages import parse_messages
from margin.messages_chat import chat_data as messages_chat
from margin.messages_chat import parse as messages_parse
from margin.parsing import parse_request
from margin.protocol import MAX_BLOCK_ORDER, MAX_CONTENT_PARTS, Endpoint
from margin.responses import parse_responses
from margin.responses_chat import chat_data as responses_chat
from margin.responses_reasoning import encode
from margin.types import Call
from tests.backends.anthropic_upstream import INTERLEAVED, WEATHER

FIRST, USE, SECOND, TEXT = INTERLEAVED
CALL = {"id": USE["id"], "type": "function",
        "function": {"name": USE["name"], "arguments": orjson.dumps(USE["input"]).decode()}}  # fmt: skip
ORDER = [{"type": "thinking"}, {"type": "tool_use"}, {"type": "thinking"}, {"type": "text", "chars": 11}]
ASK = {"role": "user", "content": "weather in Paris? then say hello"}
RESULT = {"role": "tool", "tool_call_id": USE["id"], "content": "sunny"}


def _turn(**fields: Any) -> dict[str, Any]:
    """The interleaved answer as a chat client sends it back (its fields overridden by `fields`)."""
    turn = {"role": "assistant", "content": TEXT["text"], "tool_calls": [CALL], "thinking_blocks": [FIRST, SECOND],
            "block_order": ORDER}  # fmt: skip
    return {**turn, **fields}


def _call(messages: list[Any]) -> Call:
    data = {"model": "claude", "messages": messages, "tools": [WEATHER], "reasoning_effort": "low", "max_tokens": 4000}
    return Call(Endpoint.CHAT, parse_request(Endpoint.CHAT, data), data, "claude", "claude-haiku-4-5", "r1")


def _sent(messages: list[Any]) -> list[dict[str, Any]]:
    """The turns an anthropic backend sends for `messages`."""
    _, data = AnthropicBackend("claude", AnthropicBackendConfig())._request(_call(messages), stream=False)
    turns: list[dict[str, Any]] = orjson.loads(data)["messages"]
    return turns


def _assistant(**fields: Any) -> list[dict[str, Any]]:
    turns = _sent([ASK, _turn(**fields), RESULT])
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"]
    content: list[dict[str, Any]] = turns[1]["content"]
    return content


def test_a_turn_with_its_block_order_goes_back_in_that_order_byte_for_byte() -> None:
    assert _assistant() == INTERLEAVED  # signatures included, exact
    assert _assistant(block_order=None) == [FIRST, SECOND, TEXT, USE]  # without one: as before
    assert _assistant(block_order=ORDER[:3], content=None) == [FIRST, USE, SECOND]  # no text, no text entry


def test_text_pieces_go_where_their_entries_are() -> None:
    order = [{"type": "thinking"}, {"type": "text", "chars": 6}, {"type": "tool_use"}, {"type": "thinking"},
             {"type": "text", "chars": 5}]  # fmt: skip
    pieces = [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]
    assert _assistant(block_order=order) == [FIRST, pieces[0], USE, SECOND, pieces[1]]
    # content as parts (the Responses and Messages translations send those): their text, split the same way
    parts = [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo world"}]
    assert _assistant(block_order=order, content=parts) == [FIRST, pieces[0], USE, SECOND, pieces[1]]
    # content whose length is not the entries' (the guard redacted it): whole, where its first text was
    assert _assistant(block_order=order, content="<EMAIL_1>") == [FIRST, {"type": "text", "text": "<EMAIL_1>"},
                                                                  USE, SECOND]  # fmt: skip


def test_a_block_order_that_does_not_account_for_the_turn_keeps_the_old_order() -> None:
    old = [FIRST, SECOND, TEXT, USE]
    for wrong in (ORDER[:3], [*ORDER, {"type": "tool_use"}], [ORDER[1], ORDER[0], ORDER[3]], ORDER[:2] + ORDER[3:]):
        assert _assistant(block_order=wrong) == old
    assert _assistant(block_order=ORDER[:2], content="") == [FIRST, SECOND, USE]  # too few thinking entries


def test_an_unsigned_thinking_block_is_left_out_where_it_stood() -> None:
    unsigned = {"type": "thinking", "thinking": "from another upstream", "signature": ""}
    assert _assistant(thinking_blocks=[FIRST, unsigned]) == [FIRST, USE, TEXT]


HOSTILE = [
    ([ORDER[0]] * (MAX_BLOCK_ORDER + 1), "messages.1.block_order", "array_above_max_length"),
    ([], "messages.1.block_order", None),
    ("thinking", "messages.1.block_order", None),
    ({"type": "thinking"}, "messages.1.block_order", None),
    (["thinking"], "messages.1.block_order.0", None),
    ([{"type": "image"}], "messages.1.block_order.0", None),
    ([{"type": "thinking", "chars": 3}], "messages.1.block_order.0.thinking.chars", None),
    ([{"type": "text"}], "messages.1.block_order.0.text.chars", None),
    ([{"type": "text", "chars": -1}], "messages.1.block_order.0.text.chars", None),
    ([{"type": "text", "chars": "11"}], "messages.1.block_order.0.text.chars", None),
    ([{"type": "text", "chars": True}], "messages.1.block_order.0.text.chars", None),
    ([{"type": "text", "chars": 2**31}], "messages.1.block_order.0.text.chars", None),
    ([{"type": "text", "chars": 1.0}], "messages.1.block_order.0.text.chars", None),
    ([ORDER[0], {"type": "tool_use", "id": "x"}], "messages.1.block_order.1.tool_use.id", None),
]


@pytest.mark.parametrize(("order", "param", "code"), HOSTILE)
def test_a_block_order_is_bounded_at_parse_time(order: Any, param: str, code: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(Endpoint.CHAT, {"model": "m", "messages": [ASK, _turn(block_order=order), RESULT]})
    assert caught.value.param == param, caught.value.message
    assert code is None or caught.value.code == code


def test_only_an_assistant_message_holds_a_block_order_and_its_entries_count_as_content_parts() -> None:
    for role in ("user", "system", "tool"):
        with pytest.raises(InvalidRequest) as caught:
            parse_request(Endpoint.CHAT, {"model": "m", "messages": [{**ASK, "role": role, "block_order": ORDER}]})
        assert caught.value.param == "messages.0.block_order" and "assistant" in caught.value.message
    parse_request(Endpoint.CHAT, {"model": "m", "messages": [{**ASK, "block_order": None}]})  # null: left out
    many = [_turn(block_order=[ORDER[0]] * MAX_BLOCK_ORDER)] * (MAX_CONTENT_PARTS // MAX_BLOCK_ORDER + 1)
    with pytest.raises(InvalidRequest) as caught:
        parse_request(Endpoint.CHAT, {"model": "m", "messages": [ASK, *many]})
    assert caught.value.param == "messages" and caught.value.code == "array_above_max_length"


def test_an_openai_compatible_upstream_is_sent_no_block_order() -> None:
    alone = {key: value for key, value in _turn().items() if key != "thinking_blocks"}  # a block_order alone too
    call = _call([ASK, _turn(), RESULT, alone, RESULT])
    sent = orjson.loads(OpenAIBackend("up", OpenAIBackendConfig(base_url="http://x/v1"))._body(call, stream=False))
    assert [sorted(m) for m in sent["messages"][1::2]] == [["content", "role", "tool_calls"]] * 2
    takes = OpenAIBackendConfig(base_url="http://x/v1", thinking_blocks=True)  # a LiteLLM proxy: as it came
    assert orjson.loads(OpenAIBackend("up", takes)._body(call, stream=False))["messages"][1]["block_order"] == ORDER


def _item(block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": encode(block)}


def test_responses_items_that_interleave_are_one_message_with_their_order() -> None:
    call = {
        "type": "function_call",
        "call_id": USE["id"],
        "name": USE["name"],
        "arguments": CALL["function"]["arguments"],
    }
    said = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello "},
                                                                 {"type": "refusal", "refusal": "world"}]}  # fmt: skip
    result = {"type": "function_call_output", "call_id": USE["id"], "output": "sunny"}
    items = [ASK, _item(FIRST), call, _item(SECOND), said, result]
    chat = responses_chat(parse_responses({"model": "m", "input": items}))["messages"]
    assert chat[1]["block_order"] == [*ORDER[:3], {"type": "text", "chars": 6}, {"type": "text", "chars": 5}]
    pieces = [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]
    assert _sent(chat)[1]["content"] == [FIRST, USE, SECOND, *pieces]
    usual = [ASK, _item(FIRST), _item(SECOND), said, call, result]  # thinking first: no order needed, none given
    assert "block_order" not in responses_chat(parse_responses({"model": "m", "input": usual}))["messages"][1]
    # text before the call, then thinking and text again: two assistant messages (the second a message item after
    # one with content), whose blocks are one Anthropic turn in the items' order
    hello = {"type": "message", "role": "assistant", "content": "hello "}
    world = {"type": "message", "role": "assistant", "content": "world"}
    items = [ASK, _item(FIRST), hello, call, _item(SECOND), world, result]
    chat = responses_chat(parse_responses({"model": "m", "input": items}))["messages"]
    assert [message["role"] for message in chat] == ["user", "assistant", "assistant", "tool"]
    assert _sent(chat)[1]["content"] == [FIRST, pieces[0], USE, SECOND, pieces[1]]


def test_a_messages_assistant_turn_that_interleaves_carries_its_order() -> None:
    result = {"type": "tool_result", "tool_use_id": USE["id"], "content": "sunny"}
    turns: Any = [ASK, {"role": "assistant", "content": INTERLEAVED}, {"role": "user", "content": [result]}]
    chat = messages_chat(parse_messages({"model": "m", "max_tokens": 4000, "messages": turns}))["messages"]
    assert chat[1]["block_order"] == ORDER
    assert _sent(chat)[1]["content"] == INTERLEAVED
    turns[1]["content"] = [FIRST, SECOND, TEXT, USE]
    assert (
        "block_order"
        not in messages_chat(parse_messages({"model": "m", "max_tokens": 9, "messages": turns}))["messages"][1]
    )


def test_the_order_margin_makes_translating_costs_no_content_parts_and_a_long_one_is_left_out() -> None:
    """A Messages history is bounded as Messages blocks; the `block_order` margin adds translating it is not
    counted again as the chat's content parts, and an order past `MAX_BLOCK_ORDER` entries is left out (the turn
    goes back in the plain order) rather than refused. Before, 1,500 interleaved turns (7,501 blocks, under the
    10,000) were refused with "not 10500", and one turn of 1,102 blocks with a 400 naming `block_order`, a field
    the client never sent."""
    result = {"type": "tool_result", "tool_use_id": USE["id"], "content": "sunny"}
    turns: list[Any] = [ASK]
    for _ in range(1_500):
        turns += [{"role": "assistant", "content": INTERLEAVED}, {"role": "user", "content": [result]}]
    parsed = messages_parse({"model": "m", "max_tokens": 4000, "messages": turns})
    assert sum(message.block_order is not None for message in parsed[2].messages) == 1_500
    long_turn = [TEXT, FIRST, *[{"type": "text", "text": "x"}] * 1_100]
    parsed = messages_parse(
        {"model": "m", "max_tokens": 4000, "messages": [ASK, {"role": "assistant", "content": long_turn}]}
    )
    assert parsed[2].messages[1].block_order is None and parsed[2].messages[1].thinking_blocks
