"""Anthropic's Messages API translated both ways, without a gateway: a Messages body as the chat request margin
runs (`margin.messages`), the chat answer and stream as Anthropic's Message and events
(`margin.api.messages_out`), margin's errors in Anthropic's shape (`margin.api.errors`), and the client the
request path writes through (`MessagesClient`), including an error once streaming."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from margin import errors as e
from margin.api.client import AsgiClient
from margin.api.errors import anthropic_error_body, status_of
from margin.api.messages import MessagesClient
from margin.api.messages_out import MessageEvents, from_chat, tool_input, usage_of
from margin.errors import InvalidRequest
from margin.messages import MessagesRequest, parse_messages
from margin.messages_chat import parse
from margin.pipeline.stream import DONE, sse
from margin.pipeline.values import Record
from margin.protocol import Endpoint
from margin.types import Usage

USER: Any = {"role": "user", "content": "hi"}
TEXT_X = {"type": "text", "text": "x"}
URL_SOURCE = {"type": "url", "url": "u"}


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 10, "messages": [USER], **fields}


def _chat(**fields: Any) -> dict[str, Any]:
    return parse(_body(**fields))[1]


def test_the_smallest_request_is_a_chat_with_its_output_limit() -> None:
    assert _chat() == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def test_system_as_a_string_or_text_blocks_is_one_system_message_and_a_system_turn_keeps_its_place() -> None:
    assert _chat(system="s")["messages"][0] == {"role": "system", "content": "s"}
    blocks = [
        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": "b"},
    ]
    assert _chat(system=blocks)["messages"][0] == {"role": "system", "content": "a\n\nb"}
    turns = [USER, {"role": "system", "content": [{"type": "text", "text": "later"}]}]
    assert _chat(messages=turns)["messages"][1] == {"role": "system", "content": "later"}


def test_tool_results_come_first_as_tool_messages_then_the_user_s_other_content() -> None:
    turns: Any = [
        USER,
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "calling"},
            {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
            {"type": "tool_use", "id": "t2", "name": "g", "input": {}},
        ]},
        {"role": "user", "content": [
            {"type": "text", "text": "here"},
            {"type": "tool_result", "tool_use_id": "t1", "content": "one"},
            {"type": "tool_result", "tool_use_id": "t2", "content": [TEXT_X, {"type": "text", "text": "y"}],
             "is_error": True},
            {"type": "tool_result", "tool_use_id": "t3", "is_error": True},
        ]},
    ]  # fmt: skip
    assert _chat(messages=turns)["messages"][1:] == [
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "calling"}],
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
                {"id": "t2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
            ],
            "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "sig"}],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "one"},
        {"role": "tool", "tool_call_id": "t2", "content": "Error: x\n\ny", "is_error": True, "error_prefixed": True},
        {"role": "tool", "tool_call_id": "t3", "content": "Error", "is_error": True, "error_prefixed": True},
        {"role": "user", "content": [{"type": "text", "text": "here"}]},
    ]


def test_a_tool_result_s_images_open_the_user_message_that_follows() -> None:
    """A chat's tool message holds text: the images a tool returned (a screenshot, an image file read) go to the
    user message right after the tool messages, before the user's own content."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    turn = {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": [TEXT_X, image]},
        {"type": "tool_result", "tool_use_id": "t2", "content": [image]},
        {"type": "text", "text": "and?"},
    ]}  # fmt: skip
    url = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert _chat(messages=[turn])["messages"] == [  # each result's count, for an anthropic backend (no other)
        {"role": "tool", "tool_call_id": "t1", "content": "x", "result_media": 1},
        {"role": "tool", "tool_call_id": "t2", "content": "", "result_media": 1},
        {"role": "user", "content": [url, url, {"type": "text", "text": "and?"}]},
    ]


def test_an_assistant_turn_of_tool_uses_alone_has_no_content_and_redacted_thinking_is_its_thinking_block() -> None:
    turn = {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "x"},
                                             {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}  # fmt: skip
    (message,) = _chat(messages=[USER, turn])["messages"][1:]
    assert message["content"] is None and len(message["tool_calls"]) == 1
    assert message["thinking_blocks"] == [{"type": "redacted_thinking", "data": "x"}]


def test_images_become_image_url_parts() -> None:
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": "AAAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
    ]
    assert _chat(messages=[{"role": "user", "content": content}])["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/webp;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        ({"type": "tool", "name": "f"}, {"tool_choice": {"type": "function", "function": {"name": "f"}}}),
        ({"type": "auto", "disable_parallel_tool_use": True}, {"tool_choice": "auto", "parallel_tool_calls": False}),
        ({"type": "auto", "disable_parallel_tool_use": False}, {"tool_choice": "auto"}),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    tool = {"name": "f", "input_schema": {"type": "object"}, "type": "custom", "strict": True}
    chat = _chat(tools=[tool], tool_choice=choice)
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}
    ]
    assert {key: chat[key] for key in ("tool_choice", "parallel_tool_calls") if key in chat} == expected


@pytest.mark.parametrize(
    ("fields", "effort"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "low"),
        ({"thinking": {"type": "enabled", "budget_tokens": 10_000}}, "medium"),
        ({"thinking": {"type": "enabled", "budget_tokens": 32_000, "display": "omitted"}}, "high"),
        ({"thinking": {"type": "disabled"}}, None),
        ({"thinking": {"type": "adaptive"}}, None),
        ({"output_config": {"effort": "max"}}, "xhigh"),
        ({"output_config": {"effort": "low"}, "thinking": {"type": "enabled", "budget_tokens": 32_000}}, "low"),
    ],
)
def test_thinking_and_effort_are_a_reasoning_effort(fields: dict[str, Any], effort: str | None) -> None:
    assert _chat(**fields).get("reasoning_effort") == effort


def test_settings_passed_on() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    chat = _chat(
        temperature=0, top_p=1, top_k=5, stop_sequences=["x", "y"], metadata={"user_id": "u"},
        output_config={"format": {"type": "json_schema", "schema": schema}}, service_tier="standard_only",
        cache_control={"type": "ephemeral"}, speed="standard", stream=True,
    )  # fmt: skip
    assert chat | {"messages": None} == {
        "model": "m", "messages": None, "max_tokens": 10, "temperature": 0, "top_p": 1, "top_k": 5,
        "stop": ["x", "y"], "user": "u", "stream": True, "stream_options": {"include_usage": True},
        "response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}},
    }  # fmt: skip
    assert isinstance(chat["temperature"], int)  # passed as sent (`0`, not `0.0`)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "code_execution_20250825", "name": "code"}]}, "tools.0.type"),
        ({"system": [{"type": "document", "source": {}}]}, "system.0.type"),
        ({"messages": [{"role": "assistant", "content": [{"type": "image", "source": {}}]}]},
         "messages.0.content.0.type"),
        ({"messages": [{"role": "user", "content": [{"type": "server_tool_use"}]}]}, "messages.0.content.0.type"),
        ({"messages": [{"role": "user", "content": [{"type": "search_result"}]}]}, "messages.0.content.0.type"),
        ({"diagnostics": {"previous_message_id": "msg_1"}}, "diagnostics"),
        ({"tools": [{"name": "f", "input_schema": {}, "allowed_callers": ["code_execution_20250825"]}]},
         "tools.0.allowed_callers.0"),
        ({"inference_geo": "us"}, "inference_geo"),
        ({"max_tokens": None}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"model": ""}, "model"),
        ({"tool_choice": {"type": "auto", "name": "f"}}, "tool_choice.name"),
        ({"thinking": {"type": "enabled", "budget_tokens": 100}}, "thinking.budget_tokens"),
        ({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format.schema"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": URL_SOURCE | {"x": 1}}]}]},
         "messages.0.content.0.source.x"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": ""}]}]},
         "messages.0.content.0.tool_use_id"),
    ],
)  # fmt: skip
def test_refusals_name_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse(_body(**fields))
    assert raised.value.param == param, raised.value.message
    assert raised.value.message.startswith(f"{param}: ")


def test_what_claude_code_sends_besides_is_accepted_and_changes_nothing() -> None:
    """Claude Code sends `context_management` on every request, cache_control with keys of its betas (`scope`),
    tool hints (`eager_input_streaming`, `defer_loading`, `input_examples`) and thinking blocks with
    cache_control: a 400 for any of them would stop it. None reaches the chat (the thinking block does, without
    its cache_control; `thinking` goes as sent, for an anthropic backend)."""
    cache = {"type": "ephemeral", "ttl": "1h", "scope": "global"}
    tool = {
        "name": "Read", "description": "read a file", "input_schema": {"type": "object"}, "cache_control": cache,
        "eager_input_streaming": True, "defer_loading": False, "input_examples": [{"path": "a"}],
        "allowed_callers": ["direct"],
    }  # fmt: skip
    result: Any = {"type": "tool_result", "tool_use_id": "t1", "content": "x"}
    use: Any = {"type": "tool_use", "id": "t1", "name": "Read", "input": {}}
    thought = {"type": "thinking", "thinking": "t", "signature": "s", "cache_control": cache}
    turns = [
        USER,
        {"role": "assistant", "content": [thought, {**use, "caller": {"type": "direct"}}]},
        {"role": "user", "content": [{**result, "cache_control": cache}]},
    ]
    fields = {
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": cache}],
        "thinking": {"type": "adaptive"}, "cache_control": cache,
    }  # fmt: skip
    same = {"metadata": {"user_id": "user_abc_account_def_session_ghi"}, "temperature": 1, "stream": True}
    chat = _chat(tools=[tool], messages=turns, **fields, **same)
    plain_tool = {"name": "Read", "description": "read a file", "input_schema": {"type": "object"}}
    bare = {"type": "thinking", "thinking": "t", "signature": "s"}
    plain_turns = [USER, {"role": "assistant", "content": [bare, use]}, {"role": "user", "content": [result]}]
    plain = _chat(tools=[plain_tool], messages=plain_turns, system="You are Claude Code.", **same)
    assert chat == {**plain, "thinking": {"type": "adaptive"}}  # as sent: an anthropic backend's thinking


def test_content_blocks_are_counted_before_any_is_read() -> None:
    blocks: Any = [{}] * 6_000
    with pytest.raises(InvalidRequest) as raised:
        parse_messages(_body(messages=[{"role": "user", "content": blocks}] * 2))
    assert raised.value.code == "array_above_max_length" and "12000" in raised.value.message


def test_a_tool_use_input_nested_past_what_json_writes_is_a_400_not_a_500() -> None:
    """Its arguments are JSON written again: a body parses up to 1,024 levels, orjson writes 255."""
    deep: Any = {}
    inner = deep
    for _ in range(300):
        inner["a"] = inner = {}
    turn = {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": deep}]}
    with pytest.raises(InvalidRequest) as raised:
        parse(_body(messages=[USER, turn]))
    assert raised.value.param == "messages.1.content.0.input"


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        parse_messages([])


BODY = parse_messages(_body(stop_sequences=["END"]))


def _answer(message: dict[str, Any], finish: str = "stop", **choice: Any) -> dict[str, Any]:
    usage = {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}
    return {"model": "served", "choices": [{"message": message, "finish_reason": finish, **choice}], "usage": usage}


def test_a_chat_answer_is_a_message() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": [1]}'}}
    message = from_chat(_answer({"content": "hi", "tool_calls": [call]}, "tool_calls"), BODY, "r1")
    assert message == {
        "id": "msg_r1", "type": "message", "role": "assistant", "model": "served",
        "content": [{"type": "text", "text": "hi"}, {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": [1]}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 6, "output_tokens": 3, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 4},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("finish", "matched", "reason", "sequence"),
    [
        ("stop", None, "end_turn", None),
        ("stop", "END", "stop_sequence", "END"),
        ("stop", "OTHER", "end_turn", None),
        ("length", None, "max_tokens", None),
        ("content_filter", None, "refusal", None),
        ("function_call", None, "tool_use", None),
        (None, None, "end_turn", None),
    ],
)
def test_stop_reasons(finish: Any, matched: Any, reason: str, sequence: str | None) -> None:
    message = from_chat(_answer({"content": "x"}, finish, stop_reason=matched), BODY, "r")
    assert (message["stop_reason"], message["stop_sequence"]) == (reason, sequence)


def test_an_answer_that_does_not_parse_is_an_empty_message_and_a_refusal_is_text() -> None:
    empty = from_chat(None, BODY, "r")
    assert (empty["content"], empty["model"], empty["usage"]["input_tokens"]) == ([], "m", 0)
    assert from_chat(_answer({"content": None, "refusal": "no"}, "content_filter"), BODY, "r")["content"] == [
        {"type": "text", "text": "no"}
    ]


def test_tool_arguments_that_are_not_an_object_are_kept_whole() -> None:
    assert tool_input('{"a": 1}') == {"a": 1}
    assert tool_input("") == {} and tool_input(None) == {}
    assert tool_input("[1]") == {"arguments": "[1]"} and tool_input("{bad") == {"arguments": "{bad"}


def test_usage_leaves_cache_reads_out_of_input_tokens() -> None:
    assert usage_of({"prompt_tokens": 5, "completion_tokens": 1}) == {
        "input_tokens": 5, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
    }  # fmt: skip
    assert usage_of(None)["input_tokens"] == 0


def _events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in data.split(b"\n\n"):
        lines = frame.split(b"\n")
        if len(lines) == 2 and lines[0].startswith(b"event: "):
            kind, payload = lines[0][7:].decode(), orjson.loads(lines[1][6:])
            assert payload["type"] == kind
            out.append((kind, payload))
    return out


def _delta(finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"model": "served", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_a_stream_of_text_then_tool_calls() -> None:
    events = MessageEvents(BODY, "r")
    first = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
    chunks = [
        _delta(role="assistant", content=""),
        _delta(content="he"),
        _delta(content="llo"),
        _delta(tool_calls=[first]),
        _delta(tool_calls=[{"index": 0, "function": {"arguments": '{"a":'}}]),
        _delta(tool_calls=[{"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{}"}}]),
        _delta(tool_calls=[{"index": 0, "function": {"arguments": "1}"}}]),
        _delta("tool_calls"),
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}},
    ]
    data = events.start() + b"".join(events.chunk(chunk) for chunk in chunks) + events.end()
    got = _events(data)
    assert [kind for kind, _ in got] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    start = got[0][1]["message"]
    assert (start["id"], start["model"], start["content"], start["usage"]["input_tokens"]) == ("msg_r", "served", [], 0)
    assert got[2][1] == {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "he"}}
    assert got[5][1]["content_block"] == {"type": "tool_use", "id": "c1", "name": "f", "input": {}}
    assert got[6][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"a":'}
    # the second call started while the first's block was open: held until it closed (its last delta came after)
    assert got[7][1] == {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                                                                              "partial_json": "1}"}}  # fmt: skip
    assert got[9][1] == {"type": "content_block_start", "index": 2,
                         "content_block": {"type": "tool_use", "id": "c2", "name": "g", "input": {}}}  # fmt: skip
    assert got[10][1] == {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta",
                                                                               "partial_json": "{}"}}  # fmt: skip
    assert got[12][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {
            "input_tokens": 9,
            "output_tokens": 4,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def test_an_empty_stream_still_starts_and_stops() -> None:
    events = MessageEvents(BODY, "r")
    assert [kind for kind, _ in _events(events.start() + events.end())] == [
        "message_start", "message_delta", "message_stop",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (e.InvalidRequest("x"), 400, "invalid_request_error"),
        (e.AuthenticationFailed("x"), 401, "authentication_error"),
        (e.PermissionDenied("x"), 403, "permission_error"),
        (e.ModelNotFound("x"), 404, "not_found_error"),
        (e.PayloadTooLarge("x"), 413, "request_too_large"),
        (e.BudgetExceeded("x"), 429, "rate_limit_error"),
        (e.RateLimited("x"), 429, "rate_limit_error"),
        (e.Overloaded("x"), 503, "overloaded_error"),
        (e.MethodNotAllowed("x"), 405, "invalid_request_error"),
        (e.BackendError("x"), 502, "api_error"),
        (e.BackendTimeout("x"), 504, "api_error"),
        (e.InternalError("x"), 500, "api_error"),
        (e.BackendClientError("x", upstream_status=401), 401, "authentication_error"),
        (e.ResidencyUnavailable("x"), 503, "api_error"),
    ],
)
def test_margin_s_errors_in_anthropic_s_shape(error: e.MarginError, status: int, kind: str) -> None:
    assert status_of(error) == status
    assert anthropic_error_body(error) == {"type": "error", "error": {"type": kind, "message": "x"}}


def _client(body: MessagesRequest = BODY) -> tuple[list[Any], MessagesClient]:
    """A MessagesClient over a real AsgiClient whose ASGI messages are recorded."""
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    return sent, MessagesClient(AsgiClient(send), body, Record("7", Endpoint.MESSAGES, body.model, body.stream))


def _body_of(sent: list[Any]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _head(sent: list[Any]) -> tuple[int, dict[bytes, bytes]]:
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    return start["status"], dict(start["headers"])


def test_an_error_once_streaming_is_an_error_event_and_nothing_after_it() -> None:
    """As the chat path sends its SSE error event (`Delivery.run`), then the flow's closing comment: no
    `message_stop` after it, no `[DONE]`, the cost comment kept."""
    sent, client = _client()

    async def run() -> None:
        await client.start_stream({"x-request-id": "7"})
        await client.write(sse(orjson.dumps(_delta(content="par"))))
        await client.write(sse(client.error_event(e.BackendError("the upstream broke"))))
        await client.end_stream(b": x-margin-cost-usd=0.000001000\n\n" + DONE)

    asyncio.run(run())
    data = _body_of(sent)
    got = _events(data)
    assert [kind for kind, _ in got] == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert got[-1][1] == {"type": "error", "error": {"type": "api_error", "message": "the upstream broke"}}
    assert data.endswith(b": x-margin-cost-usd=0.000001000\n\n") and DONE not in data
    assert sent[-1]["more_body"] is False
    assert _head(sent)[1][b"request-id"] == b"7" and _head(sent)[1][b"content-type"].startswith(b"text/event-stream")


def test_a_failure_before_the_stream_is_anthropic_s_json_and_one_after_an_error_event() -> None:
    sent, client = _client()
    asyncio.run(client.refuse(e.BudgetExceeded("over budget", headers={"retry-after": "3"}), {}))
    status, headers = _head(sent)
    assert (status, headers[b"retry-after"], headers[b"request-id"]) == (429, b"3", b"7")
    assert orjson.loads(_body_of(sent)) == {
        "type": "error", "error": {"type": "rate_limit_error", "message": "over budget"},
    }  # fmt: skip
    sent, client = _client()

    async def streaming() -> None:
        await client.start_stream({})
        await client.refuse(e.Overloaded("busy"), {})

    asyncio.run(streaming())
    assert [kind for kind, _ in _events(_body_of(sent))] == ["error"] and sent[-1]["more_body"] is False


def test_a_json_answer_is_translated() -> None:
    sent, client = _client()
    asyncio.run(client.answer(orjson.dumps(_answer({"content": "hi"})), {"x-request-id": "7"}))
    answered = orjson.loads(_body_of(sent))
    assert (answered["id"], answered["stop_reason"]) == ("msg_7", "end_turn")
    assert answered["content"] == [{"type": "text", "text": "hi"}] and _head(sent)[1][b"request-id"] == b"7"


def test_a_chat_without_usage_is_a_message_with_the_usage_it_was_metered_at() -> None:
    """The metered usage (the row's) where the chat has none; the chat's own where it has some. Before: zeros."""
    metered = Usage(40, 9, 10, cache_write_tokens=5)
    reported = _answer({"content": "hi"})
    bare = {key: value for key, value in reported.items() if key != "usage"}
    message = from_chat(bare, BODY, "7", metered)
    assert message["usage"] == {
        "input_tokens": 25,
        "output_tokens": 9,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 10,
    }
    assert from_chat(reported, BODY, "7", metered)["usage"]["output_tokens"] == 3
    assert from_chat(bare, BODY, "7")["usage"]["output_tokens"] == 0


PDF: Any = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}


def test_documents_become_file_parts_or_text_and_a_tool_result_s_open_the_user_message_that_follows() -> None:
    """A PDF is OpenAI's chat `file` part (its title the file name), a plain text document its text; before, every
    `document` block was a 400 (Claude Code's Read of a PDF is one, in a tool result)."""
    plain = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "words"}}
    turn = {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": [TEXT_X, {"type": "document", "source": PDF}]},
        {"type": "document", "source": PDF, "title": "r.pdf", "context": "a report"},
        plain,
    ]}  # fmt: skip

    def file(name: str, **shown: str) -> dict[str, Any]:
        url = "data:application/pdf;base64,JVBERi0x"
        return {"type": "file", "file": {"filename": name, "file_data": url}, "document": shown}

    text = {"type": "text", "text": "words", "document": {}}  # the marks: for an anthropic backend (no other)
    assert _chat(messages=[turn])["messages"] == [
        {"role": "tool", "tool_call_id": "t1", "content": "x", "result_media": 1},
        {"role": "user", "content": [file("document.pdf"), file("r.pdf", title="r.pdf", context="a report"), text]},
    ]
