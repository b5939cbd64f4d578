"""The Responses and Messages translations of what an OpenAI-compatible upstream may send, over real HTTP (`margin
serve` in front of a recording stub upstream; the official `openai` and `anthropic` SDKs as clients):

- tool call arguments sent as a JSON object rather than its text (Ollama's way): every API gives them as the
  JSON text the APIs document (chat's and Responses' `arguments`, Messages' `input`), streamed and whole; before,
  Responses and Messages dropped them (`""`, `{}`) and chat passed the object on (the SDK's stream helper fails
  on it);
- two tool calls whose argument deltas interleave (index 0, 1, 0, 1): Responses'
  `response.function_call_arguments.done` and `output_item.done` hold each call's whole arguments, and Messages'
  blocks stream one at a time (no `input_json_delta` after its block's stop); before, the first call's events
  said `""` or half its arguments;
- a 200 whose `choices` is empty or not a list: a chat client gets it as it came (tests/faults), a Responses or
  Messages client a 502, and the row an upstream error billed at the usage the upstream reported; before, an empty
  Response or Message said complete, its row `ok`; a stream none of whose events holds a choice: an error event in
  the API's own shape after what was delivered, and the same row (before: `response.completed` / `end_turn` with
  nothing in it, the row `ok`);
- Messages' `message_start` from such an upstream: its usage is zeros (the upstream tells none before the end),
  the counts come in `message_delta`, even where its first event holds a `message_start_usage` of its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.helpers import recorded_gateway, wait_ledger_row
from tests.servers import reply_events, reply_json

USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
PARIS, ROME = {"city": "Paris", "units": ["c"]}, {"city": "Rome"}
TOOL: Any = {"type": "function", "name": "weather", "parameters": {"type": "object"}}
ANTHROPIC_TOOL: Any = {"name": "weather", "input_schema": {"type": "object"}}


def _head(body: dict[str, Any]) -> dict[str, Any]:
    return {"id": "up-1", "created": 0, "model": body["model"]}


def _call(index: int, name: str | None, arguments: Any) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if name is not None:
        call |= {"id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": arguments}}
    return call


def _chunk(body: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {**_head(body), "object": "chat.completion.chunk", "choices": [choice]}


def _answer(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    """The behaviour the last message's text names: `object` (arguments as an object), `interleaved` (two calls'
    deltas interleaved), `empty` / `odd` (`choices` empty / a string), streamed: `nochoice` (no event with a
    usable choice), `hostile` (a text answer whose first event names margin's old internal `message_start_usage`)."""
    last = body["messages"][-1]["content"]
    word = last if isinstance(last, str) else next((p["text"] for p in last if p["type"] == "text"), "")
    if word in STREAMED:
        reply_events(handler, STREAMED[word](body))
        return
    if word in ("empty", "odd"):
        reply_json(handler, 200, {**_head(body), "object": "chat.completion", "choices": [] if word == "empty" else "x",
                                  "usage": USAGE})  # fmt: skip
        return
    if word == "think":
        _think(handler, body)
        return
    calls = [(0, PARIS)] if word == "object" else [(0, PARIS), (1, ROME)]
    if not body.get("stream"):
        wire = [{"id": f"call_{i}", "type": "function", "function": {"name": "weather", "arguments":
                 args if word == "object" else json.dumps(args)}} for i, args in calls]  # fmt: skip
        message = {"role": "assistant", "content": None, "tool_calls": wire}
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
        reply_json(handler, 200, {**_head(body), "object": "chat.completion", "choices": [choice], "usage": USAGE})
        return
    if word == "object":
        deltas = [{"tool_calls": [_call(0, "weather", PARIS)]}]
    else:
        halves = [(i, json.dumps(args)) for i, args in calls]
        deltas = [{"tool_calls": [_call(i, "weather", "")]} for i, _ in halves]
        for part in (slice(0, 5), slice(5, None)):
            deltas += [{"tool_calls": [_call(i, None, text[part])]} for i, text in halves]
    events = [_chunk(body, {"role": "assistant", "content": ""})] + [_chunk(body, d) for d in deltas]
    events += [_chunk(body, {}, "tool_calls"), {**_head(body), "choices": [], "usage": USAGE}]
    reply_events(handler, events)


# OpenRouter's structured reasoning (a thinking model's: its text signed, and an encrypted entry), and the pieces a
# stream gives it in (one entry's pieces share its `index`; the signature comes last)
DETAILS: Any = [
    {"type": "reasoning.text", "text": "I think", "signature": "c2ln==", "format": "anthropic-claude-v1", "index": 0},
    {"type": "reasoning.encrypted", "data": "ZW5j", "format": "anthropic-claude-v1", "index": 1},
]
PIECES: Any = [
    [{"type": "reasoning.text", "text": "I ", "format": "anthropic-claude-v1", "index": 0}],
    [{"type": "reasoning.text", "text": "think", "format": "anthropic-claude-v1", "index": 0}],
    [{"type": "reasoning.text", "text": "", "signature": "c2ln==", "format": "anthropic-claude-v1", "index": 0}],
    [DETAILS[1]],
]


def _no_choice(body: dict[str, Any]) -> list[Any]:
    """A stream none of whose events holds a choice to translate: `choices` empty, not a list, its first not an
    object; then the usual usage-only event."""
    odd: list[Any] = [[], "x", [1], {"0": {"delta": {"content": "hi"}}}]
    return [{**_head(body), "choices": choices} for choices in odd] + [{**_head(body), "choices": [], "usage": USAGE}]


FORGED = {"input_tokens": 999, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 7, "output_tokens": 3}


def _forged_start(body: dict[str, Any]) -> list[Any]:
    """A text answer whose first event carries `message_start_usage` (margin's internal field before; an upstream's
    own here)."""
    first = {**_chunk(body, {"role": "assistant", "content": ""}), "message_start_usage": FORGED}
    events = [first, _chunk(body, {"content": "hi"}), _chunk(body, {}, "stop")]
    return [*events, {**_head(body), "choices": [], "usage": USAGE}]


STREAMED = {"nochoice": _no_choice, "hostile": _forged_start}


def _think(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    """A thinking model's tool call with OpenRouter's `reasoning` and `reasoning_details`."""
    wire = {"id": "call_0", "type": "function", "function": {"name": "weather", "arguments": json.dumps(PARIS)}}
    if not body.get("stream"):
        message = {"role": "assistant", "content": None, "reasoning": "I think", "reasoning_details": DETAILS,
                   "tool_calls": [wire]}  # fmt: skip
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
        reply_json(handler, 200, {**_head(body), "object": "chat.completion", "choices": [choice], "usage": USAGE})
        return
    texts = ["I ", "think", "", ""]
    deltas = [{"reasoning": text, "reasoning_details": piece} for text, piece in zip(texts, PIECES, strict=True)]
    deltas.append({"tool_calls": [{**wire, "index": 0}]})
    events = [_chunk(body, {"role": "assistant", "content": ""})] + [_chunk(body, d) for d in deltas]
    events += [_chunk(body, {}, "tool_calls"), {**_head(body), "choices": [], "usage": USAGE}]
    reply_events(handler, events)


@dataclass
class Gateway:
    url: str
    db: Path
    bodies: list[Any]
    openai: openai.OpenAI
    anthropic: anthropic.Anthropic


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("fidelity")
    with recorded_gateway(folder, _answer) as (url, bodies):
        chat = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30)
        messages = anthropic.Anthropic(base_url=url, api_key="none", max_retries=0, timeout=30)
        yield Gateway(url, folder / "ledger.db", bodies, chat, messages)
        chat.close()
        messages.close()


def _responses(gw: Gateway, word: str, stream: bool) -> tuple[Any, list[Any]]:
    body: Any = {"model": "m", "input": word, "tools": [TOOL]}
    if not stream:
        return gw.openai.responses.create(**body), []
    with gw.openai.responses.stream(**body) as events:
        seen = list(events)
        return events.get_final_response(), seen


def _messages(gw: Gateway, word: str, stream: bool) -> tuple[Any, list[Any]]:
    body: Any = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": word}],
                 "tools": [ANTHROPIC_TOOL]}  # fmt: skip
    if not stream:
        return gw.anthropic.messages.create(**body), []
    with gw.anthropic.messages.stream(**body) as events:
        seen = list(events)
        return events.get_final_message(), seen


@pytest.mark.parametrize("stream", [False, True])
def test_object_arguments_reach_every_api_as_their_json(gateway: Gateway, stream: bool) -> None:
    chat: Any
    if stream:
        with gateway.openai.chat.completions.stream(
            model="m", messages=[{"role": "user", "content": "object"}], tools=[{"type": "function",
            "function": {"name": "weather", "parameters": {"type": "object"}}}],
        ) as chat_events:  # fmt: skip
            chat = chat_events.get_final_completion().choices[0].message.tool_calls
    else:
        chat = (
            gateway.openai.chat.completions.create(model="m", messages=[{"role": "user", "content": "object"}])
            .choices[0]
            .message.tool_calls
        )
    assert chat is not None and json.loads(chat[0].function.arguments) == PARIS
    response, _ = _responses(gateway, "object", stream)
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("weather", PARIS)]
    message, events = _messages(gateway, "object", stream)
    assert [(b.type, b.input) for b in message.content] == [("tool_use", PARIS)]
    if stream:
        deltas = [e.delta.partial_json for e in events if e.type == "content_block_delta"]
        assert json.loads("".join(deltas)) == PARIS


def test_interleaved_calls_end_with_their_whole_arguments_on_responses(gateway: Gateway) -> None:
    response, events = _responses(gateway, "interleaved", True)
    whole = [("weather", PARIS), ("weather", ROME)]
    assert [(i.name, json.loads(i.arguments)) for i in response.output if i.type == "function_call"] == whole
    done = [json.loads(e.arguments) for e in events if e.type == "response.function_call_arguments.done"]
    items = [json.loads(e.item.arguments) for e in events if e.type == "response.output_item.done"]
    assert done == items == [PARIS, ROME]
    by_item: dict[str, str] = {}
    for e in events:
        if e.type == "response.function_call_arguments.delta":
            by_item[e.item_id] = by_item.get(e.item_id, "") + e.delta
    assert [json.loads(v) for v in by_item.values()] == [PARIS, ROME]
    whole_response, _ = _responses(gateway, "interleaved", False)
    assert [(i.name, json.loads(i.arguments)) for i in whole_response.output if i.type == "function_call"] == whole


def test_interleaved_calls_stream_one_block_at_a_time_on_messages(gateway: Gateway) -> None:
    message, events = _messages(gateway, "interleaved", True)
    assert [(b.type, b.input) for b in message.content] == [("tool_use", PARIS), ("tool_use", ROME)]
    opened: int | None = None
    pieces: dict[int, str] = {}
    for e in events:
        if e.type == "content_block_start":
            assert opened is None, "a block started before the one open stopped"
            opened = e.index
        elif e.type == "content_block_delta":
            assert e.index == opened, "a delta for a block that is not the open one"
            pieces[e.index] = pieces.get(e.index, "") + e.delta.partial_json
        elif e.type == "content_block_stop":
            assert e.index == opened
            opened = None
    assert [json.loads(pieces[i]) for i in sorted(pieces)] == [PARIS, ROME]
    start = next(e for e in events if e.type == "message_start")
    assert start.message.usage.input_tokens == 0  # unknown before the end from an OpenAI-compatible upstream
    assert message.usage.input_tokens == USAGE["prompt_tokens"]


@pytest.mark.parametrize("word", ["empty", "odd"])
def test_an_answer_with_no_choice_is_a_bad_response_to_translated_apis(gateway: Gateway, word: str) -> None:
    with pytest.raises(openai.APIStatusError) as responses:
        gateway.openai.responses.create(model="m", input=word)
    with pytest.raises(anthropic.APIStatusError) as messages:
        gateway.anthropic.messages.create(model="m", max_tokens=16, messages=[{"role": "user", "content": word}])
    for error in (responses.value, messages.value):
        assert error.status_code == 502
        request_id = error.response.headers["x-margin-request-id"]
        row = wait_ledger_row(gateway.db, gateway.url, request_id)
        assert (row.status, row.http_status) == ("upstream_error", 502)
        assert (row.input_tokens, row.output_tokens) == (USAGE["prompt_tokens"], USAGE["completion_tokens"])
    assert responses.value.body["code"] == "upstream_bad_response"  # type: ignore[index]
    chat = gateway.openai.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": word}]
    )
    assert chat.status_code == 200  # chat's pass-through, as tests/faults asserts it


def test_a_tool_results_media_open_the_user_message_for_an_openai_upstream(gateway: Gateway) -> None:
    """An OpenAI-compatible upstream's tool messages hold text only: a Messages tool_result's image and document
    open the user message after it (a document's title as its file name), and the marks that let an anthropic
    backend put them back (and pass a document's title and context) are not sent."""
    png = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}
    result: Any = [{"type": "text", "text": "done"}, {"type": "image", "source": png},
                   {"type": "document", "source": pdf, "title": "r.pdf", "context": "c"}]  # fmt: skip
    turns: Any = [
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": result},
                                     {"type": "text", "text": "object"}]},
    ]  # fmt: skip
    gateway.anthropic.messages.create(model="m", max_tokens=16, messages=turns, tools=[ANTHROPIC_TOOL])
    sent = gateway.bodies[-1]["messages"]
    assert sent[2] == {"role": "tool", "tool_call_id": "t1", "content": "done"}
    assert sent[3] == {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "file", "file": {"filename": "r.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}},
        {"type": "text", "text": "object"},
    ]}  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
def test_openrouters_reasoning_details_go_back_to_it_through_responses(gateway: Gateway, stream: bool) -> None:
    """OpenRouter's `reasoning_details` (which a thinking model needs back to continue its reasoning in a tool
    loop, as chat clients send them) ride in the reasoning item's `encrypted_content` and reach the upstream again
    on the next turn, as the assistant message's `reasoning_details` (a stream's pieces merged into whole entries).
    Before, the reasoning item had no `encrypted_content` and the next turn sent none."""
    tools: Any = [TOOL]
    user: Any = {"role": "user", "content": "think"}
    first: Any
    if stream:
        with gateway.openai.responses.stream(model="m", input=[user], tools=tools) as events:
            first = events.get_final_response()
    else:
        first = gateway.openai.responses.create(model="m", input=[user], tools=tools)
    assert [item.type for item in first.output] == ["reasoning", "function_call"]
    assert first.output[0].content and first.output[0].content[0].text == "I think"
    back: Any = [item.model_dump(exclude_none=True) for item in first.output]
    output: Any = {"type": "function_call_output", "call_id": "call_0", "output": "sunny"}
    gateway.openai.responses.create(model="m", input=[user, *back, output], tools=tools)
    sent = gateway.bodies[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["reasoning_details"] == DETAILS


def _stream(gw: Gateway, path: str, body: dict[str, Any]) -> tuple[str, list[Any]]:
    """A stream over plain HTTP: its request id and each event's JSON (`[DONE]` and comments left out)."""
    with httpx.stream("POST", gw.url + path, json={**body, "stream": True}, timeout=30) as answer:
        assert answer.status_code == 200
        raw = answer.read().decode()
        request_id = answer.headers["x-margin-request-id"]
    datas = [line[len("data: ") :] for line in raw.splitlines() if line.startswith("data: ")]
    return request_id, [json.loads(data) for data in datas if data != "[DONE]"]


def test_a_stream_with_no_choice_ends_in_an_error_on_translated_apis(gateway: Gateway) -> None:
    """As the whole answer's 502: an error event in the API's own shape (after what was delivered), no completed
    Response or finished Message, and the row an upstream error billed at the usage the upstream reported. Before,
    `response.completed` with no output, or `end_turn` with no content, and the row `ok`."""
    said = {"role": "user", "content": "nochoice"}
    responses = _stream(gateway, "/v1/responses", {"model": "m", "input": "nochoice"})
    messages = _stream(gateway, "/v1/messages", {"model": "m", "max_tokens": 16, "messages": [said]})
    kinds = [event["type"] for event in responses[1]]
    assert kinds[0] == "response.created" and kinds[-2:] == ["error", "response.failed"], kinds
    assert "response.completed" not in kinds
    assert responses[1][-2]["code"] == "upstream_bad_response"
    kinds = [event["type"] for event in messages[1]]
    assert kinds == ["message_start", "error"], kinds
    assert messages[1][-1]["error"]["type"] == "api_error"
    for request_id in (responses[0], messages[0]):
        row = wait_ledger_row(gateway.db, gateway.url, request_id)
        assert (row.status, row.http_status) == ("upstream_error", 502)
        assert (row.input_tokens, row.output_tokens) == (USAGE["prompt_tokens"], USAGE["completion_tokens"])
    request_id, events = _stream(gateway, "/v1/chat/completions", {"model": "m", "messages": [said]})
    assert not any("error" in event for event in events)  # chat's pass-through, as tests/faults asserts it
    assert wait_ledger_row(gateway.db, gateway.url, request_id).status == "ok"


def test_an_upstreams_message_start_usage_is_not_taken_for_margins(gateway: Gateway) -> None:
    """An OpenAI-compatible upstream's own `message_start_usage` (the name of margin's internal field before) does
    not set a Messages client's `message_start` usage: zeros, the counts coming in `message_delta`. Before, its 999
    input tokens were shown."""
    said = {"role": "user", "content": "hostile"}
    _, events = _stream(gateway, "/v1/messages", {"model": "m", "max_tokens": 16, "messages": [said]})
    start = next(event for event in events if event["type"] == "message_start")
    assert start["message"]["usage"]["input_tokens"] == 0
    assert start["message"]["usage"]["cache_read_input_tokens"] == 0
    delta = next(event for event in events if event["type"] == "message_delta")
    assert delta["usage"]["input_tokens"] == USAGE["prompt_tokens"]
