"""The Responses API's translation both ways, without a server: a Responses body → the chat request
(`margin.responses`), a chat answer → the Response object, chat stream chunks → the Responses events
(`margin.api.responses_out`), and the client the request path writes through (`ResponsesClient`), including
an error once streaming."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from margin.api.responses import ResponsesClient
from margin.api.responses_out import StreamEvents, from_chat, skeleton, usage_of
from margin.errors import BackendError, InvalidRequest, MarginError
from margin.pipeline.stream import DONE, sse
from margin.pipeline.values import Record
from margin.protocol import Endpoint
from margin.responses import parse_responses
from margin.responses_chat import chat_data, parse


def _chat(**body: Any) -> dict[str, Any]:
    return chat_data(parse_responses({"model": "m", **body}))


def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    assert _chat(input="hi", instructions="be brief") == {
        "model": "m",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    }


def test_items_become_messages_and_function_calls_join_one_assistant_message() -> None:
    image = {"type": "input_image", "image_url": "https://x/cat.png", "detail": "low"}
    items: Any = [
        {"role": "user", "content": [{"type": "input_text", "text": "look"}, image]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "ok", "annotations": []}],
            "id": "msg_1",
            "status": "completed",
        },
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"a":1}'},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
    ]
    assert _chat(input=items)["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "low"}},
        ]},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}], "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": '{"a":1}'}},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "two"}]},
    ]  # fmt: skip


def test_an_assistant_message_after_function_calls_is_their_message_s_content() -> None:
    """Calls then text (a streamed answer's order): one assistant message, the tool messages right after it; text
    after an assistant message that has content stays a message of its own."""
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    items: Any = [
        {"role": "user", "content": "go"},
        call,
        {"role": "assistant", "content": "calling"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"role": "assistant", "content": "done"},
        {"role": "assistant", "content": "really"},
    ]
    assert _chat(input=items)["messages"] == [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "calling", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "assistant", "content": "done"},
        {"role": "assistant", "content": "really"},
    ]  # fmt: skip


def test_tools_tool_choice_and_text_format() -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    chat = _chat(
        input="x", tools=[tool], tool_choice={"type": "function", "name": "f"}, text={"format": {"type": "json_object"}}
    )
    assert chat["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["response_format"] == {"type": "json_object"}
    assert "response_format" not in _chat(input="x", text={"format": {"type": "text"}, "verbosity": "low"})
    assert _chat(input="x", text={"verbosity": "low"})["verbosity"] == "low"


def test_settings_limits_logprobs_reasoning_and_streams() -> None:
    chat = _chat(
        input="x", max_output_tokens=9, reasoning={"effort": "low"}, include=["message.output_text.logprobs"],
        top_logprobs=2, stream=True, stream_options={"include_obfuscation": False}, prompt_cache_key="k",
        safety_identifier="s", service_tier="flex", store=False, truncation="disabled",
    )  # fmt: skip
    assert chat["max_tokens"] == 9 and chat["reasoning_effort"] == "low"
    assert (chat["logprobs"], chat["top_logprobs"]) == (True, 2)
    assert chat["stream_options"] == {"include_usage": True} and chat["stream"] is True
    assert (chat["prompt_cache_key"], chat["safety_identifier"], chat["service_tier"]) == ("k", "s", "flex")
    assert "store" not in chat and "truncation" not in chat
    body, data, request = parse({"model": "m", "input": "x", "max_output_tokens": 9, "stream": True})
    assert (
        request.output_limit == 9 and request.include_usage and data["messages"] == [{"role": "user", "content": "x"}]
    )
    assert body.stream


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "previous_response_id": "r"}, "previous_response_id"),
        ({"input": "x", "store": True}, "store"),
        ({"input": [{"role": "system", "content": [{"type": "output_text", "text": "x"}]}]}, "input.0.content.0.type"),
        (
            {"input": [{"role": "assistant", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "input.0.content.0",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input.0.content.0.file_id",
        ),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input.0.content.0.image_url"),
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "x"}] * 6000}] * 2}, "input"),
        ({"input": []}, "input"),
        ({}, "input"),
        ({"input": "x", "include": ["file_search_call.results"]}, "include.0"),
    ],
)
def test_refusals_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse({"model": "m", **body})
    assert caught.value.param == param


BODY = parse_responses({"model": "m", "input": "x", "max_output_tokens": 50, "metadata": {"a": "b"}})


def _answer(message: dict[str, Any], finish: str = "stop", **extra: Any) -> dict[str, Any]:
    usage = {"prompt_tokens": 10, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 3},
             "completion_tokens_details": {"reasoning_tokens": 1}}  # fmt: skip
    choice = {"index": 0, "message": message, "finish_reason": finish, **extra}
    return {"model": "m-2025", "choices": [choice], "usage": usage, "service_tier": "default"}


def test_a_chat_answer_as_a_response() -> None:
    response = from_chat(_answer({"role": "assistant", "content": "hi"}), skeleton(BODY, "resp_1"), "1")
    assert response["output"] == [
        {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "hi", "annotations": [], "logprobs": []}]},
    ]  # fmt: skip
    assert response["usage"] == {
        "input_tokens": 10, "input_tokens_details": {"cached_tokens": 3}, "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 14,
    }  # fmt: skip
    assert (response["status"], response["model"], response["service_tier"]) == ("completed", "m-2025", "default")
    assert (response["max_output_tokens"], response["metadata"], response["store"]) == (50, {"a": "b"}, False)


@pytest.mark.parametrize(("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")])
def test_an_early_finish_is_incomplete(finish: str, reason: str) -> None:
    response = from_chat(_answer({"content": "h"}, finish), skeleton(BODY, "resp_1"), "1")
    assert (response["status"], response["incomplete_details"]) == ("incomplete", {"reason": reason})
    assert response["output"][0]["status"] == "incomplete"


def test_tool_calls_refusals_and_logprobs() -> None:
    call = {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    logprobs = {"content": [{"token": "h", "logprob": -0.1, "bytes": [104], "top_logprobs": []}]}
    answer = _answer({"content": "h", "tool_calls": [call], "refusal": None}, "tool_calls", logprobs=logprobs)
    output = from_chat(answer, skeleton(BODY, "resp_1"), "1")["output"]
    assert output[0]["content"][0]["logprobs"] == logprobs["content"]
    assert output[1] == {"id": "fc_1_0", "type": "function_call", "status": "completed", "call_id": "call_9",
                         "name": "f", "arguments": "{}"}  # fmt: skip
    refused = from_chat(_answer({"content": None, "refusal": "no"}), skeleton(BODY, "resp_1"), "1")["output"]
    assert refused[0]["content"] == [{"type": "refusal", "refusal": "no"}]


def test_usage_of_nothing_is_none() -> None:
    assert usage_of(None) is None
    assert usage_of({"prompt_tokens": 2})["total_tokens"] == 2  # type: ignore[index]


def _events(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in data.split(b"\n") if line.startswith(b"data: ")]


def _delta(**delta: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def test_stream_events_text_then_a_tool_call() -> None:
    events = StreamEvents(skeleton(BODY, "resp_1"), "1")
    out = events.start() + events.chunk(_delta(role="assistant", content="he")) + events.chunk(_delta(content="y"))
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a"'}}
    out += events.chunk(_delta(tool_calls=[call]))
    out += events.chunk(_delta(tool_calls=[{"index": 0, "function": {"arguments": ":1}"}}]))
    out += events.chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    out += events.chunk({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    out += events.end()
    parsed = _events(out)
    assert [e["type"] for e in parsed] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed",
    ]  # fmt: skip
    assert [e["sequence_number"] for e in parsed] == list(range(len(parsed)))
    final = parsed[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["message", "function_call"]
    assert final["output"][0]["content"][0]["text"] == "hey" and final["output"][1]["arguments"] == '{"a":1}'
    assert final["usage"]["total_tokens"] == 5 and final["status"] == "completed"
    assert parsed[2]["item"]["content"] == [] and parsed[9]["output_index"] == 1


def test_text_after_a_tool_call_is_a_message_of_its_own() -> None:
    """Text, a tool call, text again: two message items with ids of their own, each with only its text (the
    second used to repeat the first's text under the first's id); logprobs kept per item; every delta event is
    laid out as the other events are (the same keys in the same order)."""
    events = StreamEvents(skeleton(BODY, "resp_1"), "1")
    logprob = {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []}
    first = {"choices": [{"index": 0, "delta": {"content": "a"}, "logprobs": {"content": [logprob]}}]}
    out = events.start() + events.chunk(first) + events.chunk(_delta(content="b"))
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    out += (
        events.chunk(_delta(tool_calls=[call])) + events.chunk(_delta(content="c")) + events.chunk(_delta(content="d"))
    )
    out += events.end()
    parsed = _events(out)
    deltas = [e for e in parsed if e["type"] == "response.output_text.delta"]
    assert [list(e) for e in deltas] == [
        ["type", "sequence_number", "item_id", "output_index", "content_index", "delta", "logprobs"]
    ] * 4
    assert [(e["item_id"], e["output_index"], e["delta"]) for e in deltas] == [
        ("msg_1", 0, "a"), ("msg_1", 0, "b"), ("msg_1_1", 2, "c"), ("msg_1_1", 2, "d")
    ]  # fmt: skip
    assert deltas[0]["logprobs"] == [logprob] and deltas[1]["logprobs"] == []
    output = parsed[-1]["response"]["output"]
    assert [(item["type"], item["id"]) for item in output] == [("message", "msg_1"), ("function_call", "fc_1_0"),
                                                                ("message", "msg_1_1")]  # fmt: skip
    assert [output[0]["content"][0]["text"], output[2]["content"][0]["text"]] == ["ab", "cd"]
    assert output[0]["content"][0]["logprobs"] == [logprob] and output[2]["content"][0]["logprobs"] == []
    assert [e["sequence_number"] for e in parsed] == list(range(len(parsed)))


class Inner:
    """What an `AsgiClient` was asked to send."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.answered: bytes | None = None
        self.ended = False

    def status_of(self, error: MarginError) -> int:
        return 502

    def error_event(self, error: MarginError) -> bytes:
        return orjson.dumps({"error": {"message": error.message, "type": "server_error", "param": None,
                                       "code": error.code}})  # fmt: skip

    async def answer(self, body: bytes, headers: Mapping[str, str]) -> None:
        self.answered = body

    async def refuse(self, error: MarginError, headers: Mapping[str, str]) -> None:
        self.answered = b"refused"

    async def start_stream(self, headers: Mapping[str, str]) -> None:
        return None

    async def write(self, data: bytes) -> None:
        self.sent.append(data)

    async def end_stream(self, data: bytes) -> None:
        self.sent.append(data)
        self.ended = True


def _record(request_id: str) -> Record:
    return Record(request_id, Endpoint.CHAT, BODY.model, BODY.stream)


def test_an_error_once_streaming_is_an_error_event_then_response_failed() -> None:
    """As the chat path sends its SSE error event (`Delivery.run`), then the flow's closing comment: no
    `response.completed` after it, no `[DONE]`, the cost comment kept."""
    inner = Inner()
    client = ResponsesClient(inner, BODY, _record("1"))  # type: ignore[arg-type]
    failure = BackendError("the upstream broke", code="upstream_error")

    async def run() -> None:
        await client.start_stream({})
        await client.write(sse(orjson.dumps(_delta(content="par"))))
        await client.write(sse(client.error_event(failure)))
        await client.end_stream(b": x-margin-cost-usd=0.000001000\n\n" + DONE)

    asyncio.run(run())
    sent = b"".join(inner.sent)
    kinds = [e["type"] for e in _events(sent)]
    assert kinds[-2:] == ["error", "response.failed"] and "response.completed" not in kinds
    error, failed = _events(sent)[-2:]
    assert (error["code"], error["message"]) == ("upstream_error", "the upstream broke")
    assert failed["response"]["status"] == "failed" and failed["response"]["error"]["code"] == "upstream_error"
    assert sent.endswith(b": x-margin-cost-usd=0.000001000\n\n") and DONE not in sent and inner.ended


def test_a_refusal_before_the_stream_is_the_chat_path_s_and_a_json_answer_is_translated() -> None:
    inner = Inner()
    client = ResponsesClient(inner, BODY, _record("7"))  # type: ignore[arg-type]
    asyncio.run(client.refuse(BackendError("down"), {}))
    assert inner.answered == b"refused"
    asyncio.run(client.answer(orjson.dumps(_answer({"content": "hi"})), {}))
    assert inner.answered is not None and orjson.loads(inner.answered)["id"] == "resp_7"


def test_allowed_tools_is_chat_s_allowed_tools_and_names_only_the_request_s_tools() -> None:
    tools = [{"type": "function", "name": name, "parameters": {"type": "object"}} for name in ("f", "g")]
    named = [{"type": "function", "name": "g"}]
    chat = _chat(input="x", tools=tools, tool_choice={"type": "allowed_tools", "mode": "auto", "tools": named})
    allowed = {"mode": "auto", "tools": [{"type": "function", "function": {"name": "g"}}]}
    assert chat["tool_choice"] == {"type": "allowed_tools", "allowed_tools": allowed}
    with pytest.raises(InvalidRequest) as caught:
        _chat(input="x", tools=tools[:1], tool_choice={"type": "allowed_tools", "mode": "required", "tools": named})
    assert caught.value.param == "tool_choice.tools.0.name"


def test_an_inline_file_is_a_chat_file_part() -> None:
    """`input_file` with `file_data` (the SDK's way to send a PDF) is OpenAI's chat `file` part, which an anthropic
    backend sends as a document; before, every `input_file` part was a 400. One without a `filename` is named
    `document.pdf`, as a Messages `document` without a `title` is (OpenAI's chat API expects a `filename` beside
    `file_data`; before, the part was sent without one)."""
    pdf = "data:application/pdf;base64,JVBERi0x"
    parts: Any = [
        {"type": "input_file", "file_data": pdf, "filename": "r.pdf"},
        {"type": "input_file", "file_data": pdf},
    ]
    content = [{"type": "input_text", "text": "sum up"}, *parts]
    assert _chat(input=[{"role": "user", "content": content}])["messages"][0]["content"] == [
        {"type": "text", "text": "sum up"},
        {"type": "file", "file": {"file_data": pdf, "filename": "r.pdf"}},
        {"type": "file", "file": {"file_data": pdf, "filename": "document.pdf"}},
    ]
