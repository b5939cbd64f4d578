"""Reasoning items on the Responses API without a server (`margin.responses_reasoning`): margin's encoding of a
thinking block both ways, how reasoning input items join the chat's assistant messages, a chat answer's
thinking as output items, and the stream's reasoning events (a backend's bare `reasoning_content` too)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from margin.api.responses_out import StreamEvents, from_chat, skeleton
from margin.errors import InvalidRequest
from margin.responses import parse_responses
from margin.responses_chat import chat_data, input_items
from margin.responses_reasoning import ENCODING, decode, encode

THINKING = {"type": "thinking", "thinking": "hm \u00e9 \U0001f600", "signature": "c2ln+/=="}
REDACTED = {"type": "redacted_thinking", "data": "EmwKAhgB"}
BODY = parse_responses({"model": "m", "input": "x"})


def _item(block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": encode(block)}


def test_a_block_survives_its_encoding_byte_for_byte_and_nothing_else_decodes() -> None:
    assert decode(encode(THINKING) or "") == THINKING and decode(encode(REDACTED) or "") == REDACTED
    assert encode({**THINKING, "cache_control": {"type": "ephemeral"}}) == encode(THINKING)  # own keys only
    assert encode({"type": "thinking", "thinking": "x"}) is None and encode({"type": "text", "text": "x"}) is None
    for other in ("gAAAAABopaque", ENCODING + "!!", ENCODING + base64.urlsafe_b64encode(b'{"type":"text"}').decode(),
                  ENCODING + base64.urlsafe_b64encode(b'{"type":"redacted_thinking","data":""}').decode()):  # fmt: skip
        assert decode(other) is None


def _messages(items: list[Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = chat_data(parse_responses({"model": "m", "input": items}))["messages"]
    return messages


def test_reasoning_items_are_the_thinking_blocks_of_the_next_assistant_turn() -> None:
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    result = {"type": "function_call_output", "call_id": "c1", "output": "ok"}
    user = {"role": "user", "content": "q"}
    said = {"role": "assistant", "content": "Let me look."}
    # the usual order: blocks, the message, the call: one assistant message holding all three
    assert _messages([user, _item(THINKING), _item(REDACTED), said, call, result])[1] == {
        "role": "assistant", "content": "Let me look.", "thinking_blocks": [THINKING, REDACTED],
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }  # fmt: skip
    # blocks before a call joined to the message before them: that message's too
    assert _messages([user, said, _item(THINKING), call, result])[1]["thinking_blocks"] == [THINKING]
    # another provider's item or one without content: left out; blocks no assistant item follows: left out
    foreign = {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAAAAB"}
    assert _messages([user, foreign, {"type": "reasoning", "summary": []}, said, _item(THINKING), user]) == [
        user, said, user,
    ]  # fmt: skip


def test_a_reasoning_item_s_summary_and_content_count_as_content_parts() -> None:
    part = {"type": "summary_text", "text": "s"}
    item: Any = {"type": "reasoning", "summary": [part] * 6000, "content": [{"type": "reasoning_text", "text": "t"}]}
    with pytest.raises(InvalidRequest) as caught:
        parse_responses({"model": "m", "input": [item, {**item, "content": None}]})
    assert caught.value.param == "input" and "not 12001" in str(caught.value)
    assert len(_messages([item, {"role": "user", "content": "q"}])) == 1


def test_stored_input_items_of_type_reasoning_get_an_id() -> None:
    item: Any = {"type": "reasoning", "summary": [], "encrypted_content": encode(REDACTED)}
    assert input_items({"input": [item]}, "req")[0]["id"] == "rs_req_in0"


def _answer(message: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": None}


def test_a_chat_answer_s_thinking_is_reasoning_items_first() -> None:
    message = {"role": "assistant", "content": "hi", "reasoning_content": THINKING["thinking"],
               "thinking_blocks": [THINKING, REDACTED]}  # fmt: skip
    output = from_chat(_answer(message), skeleton(BODY, "resp_1"), "1")["output"]
    assert [item["type"] for item in output] == ["reasoning", "reasoning", "message"]
    assert output[0]["content"] == [{"type": "reasoning_text", "text": THINKING["thinking"]}]
    assert [decode(item["encrypted_content"]) for item in output[:2]] == [THINKING, REDACTED]
    assert output[1]["content"] == [] and output[0]["id"] == "rs_1_0" and output[1]["id"] == "rs_1_1"
    # a backend's bare reasoning_content (vLLM): one item, nothing to send back
    bare = from_chat(
        _answer({"role": "assistant", "content": "hi", "reasoning_content": "so"}), skeleton(BODY, "r"), "2"
    )
    assert bare["output"][0]["content"] == [{"type": "reasoning_text", "text": "so"}]
    assert bare["output"][0]["encrypted_content"] is None and bare["output"][1]["type"] == "message"
    # thinking and nothing else: still a message item after it
    alone = from_chat(
        _answer({"role": "assistant", "content": None, "thinking_blocks": [REDACTED]}), skeleton(BODY, "r"), "3"
    )
    assert [item["type"] for item in alone["output"]] == ["reasoning", "message"]


def _delta(**delta: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def _events(out: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(block.split(b"\ndata: ", 1)[1]) for block in out.split(b"\n\n") if b"\ndata: " in block]


def test_stream_reasoning_events_then_text_and_a_call() -> None:
    events = StreamEvents(skeleton(BODY, "resp_1"), "1")
    out = events.start() + events.chunk(_delta(role="assistant", reasoning_content="hm "))
    out += events.chunk(_delta(reasoning_content="\u00e9 \U0001f600")) + events.chunk(
        _delta(thinking_blocks=[THINKING])
    )
    out += events.chunk(_delta(thinking_blocks=[REDACTED])) + events.chunk(_delta(content="hi"))
    out += events.chunk(_delta(reasoning_content="more"))  # a backend's reasoning after text: an item of its own
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    out += events.chunk(_delta(tool_calls=[call])) + events.end()
    parsed = _events(out)
    assert [e["type"] for e in parsed] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed",
    ]  # fmt: skip
    assert [e["sequence_number"] for e in parsed] == list(range(len(parsed)))
    final = parsed[-1]["response"]["output"]
    assert [item["type"] for item in final] == ["reasoning", "reasoning", "message", "reasoning", "function_call"]
    assert [decode(item["encrypted_content"]) for item in final[:2]] == [THINKING, REDACTED]
    assert final[0]["content"] == [{"type": "reasoning_text", "text": THINKING["thinking"]}]
    assert final[3]["encrypted_content"] is None and final[3]["id"] == "rs_1_2"
    done = [e for e in parsed if e["type"] == "response.output_item.done"]
    assert [e["output_index"] for e in done] == [0, 1, 2, 3, 4] and [e["item"] for e in done] == final


SUMMARIZED = parse_responses({"model": "m", "input": "x", "reasoning": {"summary": "auto"}})


def test_with_a_summary_asked_for_each_item_s_text_is_its_summary_too() -> None:
    message = {"role": "assistant", "content": "hi", "thinking_blocks": [THINKING, REDACTED]}
    response = from_chat(_answer(message), skeleton(SUMMARIZED, "resp_1"), "1")
    assert response["reasoning"] == {"effort": None, "summary": "auto"}
    thinking, redacted = response["output"][:2]
    assert thinking["summary"] == [{"type": "summary_text", "text": THINKING["thinking"]}]
    assert thinking["content"] == [{"type": "reasoning_text", "text": THINKING["thinking"]}]
    assert redacted["summary"] == [] and skeleton(BODY, "r")["reasoning"]["summary"] is None


def test_stream_summary_events_come_before_each_item_s_done() -> None:
    events = StreamEvents(skeleton(SUMMARIZED, "resp_1"), "1")
    out = events.start() + events.chunk(_delta(reasoning_content="so")) + events.chunk(_delta(content="hi"))
    out += events.chunk(_delta(thinking_blocks=[THINKING, REDACTED])) + events.end()  # whole blocks: items of their own
    parsed = _events(out)
    summary = [(e["type"].removeprefix("response.reasoning_summary_"), e["output_index"]) for e in parsed
               if "summary_index" in e]  # fmt: skip
    assert summary == [("part.added", 0), ("text.delta", 0), ("text.done", 0), ("part.done", 0),
                       ("part.added", 2), ("text.delta", 2), ("text.done", 2), ("part.done", 2)]  # fmt: skip
    assert [e["sequence_number"] for e in parsed] == list(range(len(parsed)))
    done = [e["item"] for e in parsed if e["type"] == "response.output_item.done"]
    assert [item.get("summary") for item in done] == [
        [{"type": "summary_text", "text": "so"}], None, [{"type": "summary_text", "text": THINKING["thinking"]}], []
    ]  # fmt: skip
    assert parsed[-1]["response"]["output"] == done
    last = max(e["sequence_number"] for e in parsed if e.get("output_index") == 0 and "summary_index" in e)
    assert last < next(e["sequence_number"] for e in parsed if e["type"] == "response.output_item.done")
