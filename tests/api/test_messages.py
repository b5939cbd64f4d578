"""Anthropic's Messages API (`POST /v1/messages`) end to end: a running `margin serve`, real HTTP, the official
anthropic SDK as the client (its key in `x-api-key`); the `fake` backend, and an OpenAI-like upstream that
records the chat request margin sends it (tests.api.test_responses's gateway). A Messages call runs the chat
request path: keys, budgets, rate limits, the ledger row (endpoint `messages`), its usage equal to what the
answer says. Errors are Anthropic's JSON, which the SDK raises as its typed exceptions. Before: every call was a
404."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest

from margin.economics.money import from_nanousd
from tests.api.test_responses import CALL, GENERATED, Live, responses_gateway
from tests.helpers import ledger_rows

WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()


@dataclass
class Gateway:
    live: Live
    clients: dict[str, anthropic.Anthropic] = field(default_factory=dict)

    def client(self, key: str | None = None, bearer: bool = False) -> anthropic.Anthropic:
        key = key or self.live.key
        name = f"{key}:{bearer}"
        if name not in self.clients:
            auth: dict[str, Any] = {"auth_token": key} if bearer else {"api_key": key}
            self.clients[name] = anthropic.Anthropic(base_url=self.live.url, max_retries=0, **auth)
        return self.clients[name]

    def post(self, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        headers = {"x-api-key": key or self.live.key, "anthropic-version": "2023-06-01"}
        return httpx.post(self.live.url + "/v1/messages", json=body, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with responses_gateway(tmp_path_factory.mktemp("messages")) as live:
        gateway = Gateway(live)
        try:
            yield gateway
        finally:
            for client in gateway.clients.values():
                client.close()


def _usage_matches(usage: Any, row: Any) -> None:
    """Anthropic's `input_tokens` leaves out what was read from the cache; the row counts all input."""
    assert usage.input_tokens + usage.cache_read_input_tokens == row.input_tokens
    assert (usage.cache_read_input_tokens, usage.output_tokens) == (row.cached_tokens, row.output_tokens)
    assert row.cost_nanousd == row.input_tokens * 1000 + row.output_tokens * 2000


def test_a_whole_answer_is_a_message_the_sdk_parses_and_its_row_names_the_endpoint(gateway: Gateway) -> None:
    raw = gateway.client().messages.with_raw_response.create(
        model="fake-chat", max_tokens=50, system="be brief", messages=[{"role": "user", "content": "say something"}]
    )
    message = raw.parse()
    request_id = raw.headers["x-request-id"]
    assert message.id == f"msg_{request_id}" and message.type == "message" and message.role == "assistant"
    assert message._request_id == request_id  # Anthropic's `request-id` header
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "tok " * GENERATED  # type: ignore[union-attr]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    row = gateway.live.row(request_id)
    assert (row.endpoint, row.http_status, row.stream) == ("messages", 200, False)
    _usage_matches(message.usage, row)
    assert Decimal(raw.headers["x-margin-cost-usd"]) == from_nanousd(row.cost_nanousd) > 0
    assert ledger_rows(gateway.live.db, request_id) == 1


def test_a_stream_has_anthropic_s_events_in_order_and_its_usage_is_the_row_s(gateway: Gateway) -> None:
    with gateway.client().messages.with_streaming_response.create(
        model="fake-chat", max_tokens=50, messages=[{"role": "user", "content": "a b c"}], stream=True
    ) as raw:
        request_id = raw.headers["x-request-id"]
        events: list[Any] = list(raw.parse())
        body = raw.http_response
    assert [event.type for event in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * GENERATED,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0].message.id == f"msg_{request_id}" and events[-2].delta.stop_reason == "end_turn"
    assert "".join(event.delta.text for event in events[2:-3]) == "tok " * GENERATED
    row = gateway.live.row(request_id)
    assert (row.endpoint, row.stream, row.http_status) == ("messages", True, 200)
    _usage_matches(events[-2].usage, row)
    assert body.headers["content-type"].startswith("text/event-stream")
    assert ledger_rows(gateway.live.db, request_id) == 1


def test_the_stream_helper_s_final_message_has_the_row_s_usage(gateway: Gateway) -> None:
    """The SDK's own accumulation (`messages.stream`): its final message's text and usage are the row's, with
    the upstream's cached input as `cache_read_input_tokens`."""
    with gateway.client().messages.stream(
        model="plain", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "hello world" == final.content[0].text  # type: ignore[union-attr]
    assert gateway.live.bodies[-1]["stream_options"] == {"include_usage": True}
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (8, 4, 7)
    assert final.stop_reason == "end_turn"
    _usage_matches(final.usage, gateway.live.row(final.id.removeprefix("msg_")))


def test_the_chat_request_sent_upstream_is_the_translation(gateway: Gateway) -> None:
    """system blocks → one system message; blocks → parts (images as data URLs / URLs); custom tools → function
    tools; tool_choice any → required (no parallel calls); stop_sequences → stop; metadata.user_id → user; a
    thinking budget → reasoning effort; cache_control and Anthropic's headers accepted and ignored."""
    cache: Any = {"type": "ephemeral"}
    params: Any = {
        "model": "plain",
        "max_tokens": 40,
        "system": [{"type": "text", "text": "be terse", "cache_control": cache}, {"type": "text", "text": "be kind"}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "a pixel"}]},
            {"role": "user", "content": "thanks"},
        ],
        "tools": [{**WEATHER, "cache_control": cache}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "extra_headers": {"anthropic-beta": "prompt-caching-2024-07-31"},
        "extra_body": {"temperature": 0.5, "top_p": 0.9, "top_k": 40},  # the SDK's create no longer names them
    }  # fmt: skip
    gateway.client().messages.create(**params)
    assert gateway.live.bodies[-1] == {
        "model": "gpt-4.1-mini",
        "messages": [
            {"role": "system", "content": "be terse\n\nbe kind"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "a pixel"}]},
            {"role": "user", "content": "thanks"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "The weather in a city",
                    "parameters": WEATHER["input_schema"],
                },
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": 40,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["END"],
        "user": "u-1",
        "reasoning_effort": "low",
    }


def test_a_tool_use_round_trip_with_the_sdk_s_own_blocks(gateway: Gateway) -> None:
    """The answer's tool_use block (input parsed), sent back as the SDK gives it (or as its `model_dump()`, whose
    unset fields are nulls: `caller`, `toolset_name`, which were a 400), then a tool_result: the upstream gets
    the assistant's tool call and the tool's message, as a chat carries them."""
    client = gateway.client()
    question: Any = {"role": "user", "content": "weather in Paris?"}
    first = client.messages.create(model="plain", max_tokens=50, messages=[question], tools=[WEATHER])
    assert first.stop_reason == "tool_use"
    (call,) = first.content
    assert call.type == "tool_use" and (call.id, call.name, call.input) == ("call_1", "get_weather", {"city": "Paris"})
    result: Any = {"type": "tool_result", "tool_use_id": call.id, "content": [{"type": "text", "text": "sunny"}]}
    dumped = [block.model_dump() for block in first.content]
    assert (dumped[0]["caller"], dumped[0]["toolset_name"]) == (None, None)  # the SDK's unset fields, as nulls
    for sent_back in (first.content, dumped):
        follow: Any = [question, {"role": "assistant", "content": sent_back}, {"role": "user", "content": [result]}]
        second = client.messages.create(model="plain", max_tokens=50, messages=follow, tools=[WEATHER])
        assert second.content[0].type == "text" and second.content[0].text == "hello world"
        assert second.stop_reason == "end_turn"
        assert gateway.live.bodies[-1]["messages"] == [
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ]


def test_a_streamed_tool_use(gateway: Gateway) -> None:
    messages: Any = [{"role": "user", "content": "weather?"}]
    with gateway.client().messages.stream(model="plain", max_tokens=50, messages=messages, tools=[WEATHER]) as stream:
        deltas = [event.delta.type for event in stream if event.type == "content_block_delta"]
        final = stream.get_final_message()
    assert deltas == ["input_json_delta", "input_json_delta"]
    (call,) = final.content
    assert call.type == "tool_use" and (call.id, call.input) == ("call_1", {"city": "Paris"})
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize("stream", [False, True])
def test_a_length_finish_is_max_tokens(gateway: Gateway, stream: bool) -> None:
    body = {"model": "plain", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    answer = gateway.post(body)
    assert answer.status_code == 200
    row = gateway.live.row(answer.headers["x-request-id"])
    if stream:
        lines = answer.text.splitlines()
        assert [line for line in lines if line.startswith("event: ")][-2:] == [
            "event: message_delta",
            "event: message_stop",
        ]
        # the closing comment carries the cost, as a chat stream's; no `[DONE]`
        assert f": x-margin-cost-usd={from_nanousd(row.cost_nanousd):.9f}" in answer.text
        assert "[DONE]" not in answer.text
    else:
        assert answer.json()["stop_reason"] == "max_tokens"
    assert gateway.live.bodies[-1]["max_tokens"] == 3


def test_a_stream_that_breaks_ends_with_an_error_event_the_sdk_raises(gateway: Gateway) -> None:
    client = gateway.client()
    texts: list[str] = []
    messages: Any = [{"role": "user", "content": "a"}]
    with (
        pytest.raises(anthropic.APIStatusError) as raised,
        client.messages.stream(model="cut-chat", max_tokens=50, messages=messages) as stream,
    ):
        texts.extend(stream.text_stream)
    assert texts == ["tok ", "tok "]
    body: Any = raised.value.body
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert "cut the stream after 2 tokens" in body["error"]["message"]
    row = gateway.live.row(raised.value.response.headers["x-request-id"])
    assert (row.endpoint, row.status, row.output_tokens) == ("messages", "upstream_error", 2)


def test_keys_come_in_x_api_key_or_as_a_bearer_and_a_bad_one_is_the_sdk_s_authentication_error(
    gateway: Gateway,
) -> None:
    messages: Any = [{"role": "user", "content": "hi"}]
    assert gateway.client(bearer=True).messages.create(model="fake-chat", max_tokens=9, messages=messages).content
    with pytest.raises(anthropic.AuthenticationError) as raised:
        gateway.client("sk-margin-unknown").messages.create(model="fake-chat", max_tokens=9, messages=messages)
    assert raised.value.status_code == 401
    assert isinstance(raised.value.body, dict) and raised.value.body["type"] == "error"
    assert raised.value.body["error"]["type"] == "authentication_error"
    missing = httpx.post(gateway.live.url + "/v1/messages", json={}, timeout=30)
    assert missing.status_code == 401 and "x-api-key" in missing.json()["error"]["message"]


def test_a_budget_refuses_before_anything_is_sent_as_the_sdk_s_rate_limit_error(gateway: Gateway) -> None:
    sent = len(gateway.live.bodies)
    messages: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.RateLimitError) as raised:
        gateway.client().messages.create(model="tight", max_tokens=5000, messages=messages)
    body: Any = raised.value.body
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "budget" in body["error"]["message"]
    assert len(gateway.live.bodies) == sent
    row = gateway.live.row(raised.value.response.headers["x-request-id"])
    assert (row.endpoint, row.http_status) == ("messages", 429)
    assert gateway.client().messages.create(model="tight", max_tokens=100, messages=messages).content


def test_a_rate_limit_is_the_sdk_s_rate_limit_error_with_retry_after(gateway: Gateway) -> None:
    client = gateway.client(gateway.live.limited)
    messages: Any = [{"role": "user", "content": "hi"}]
    assert client.messages.create(model="fake-chat", max_tokens=9, messages=messages).content
    with pytest.raises(anthropic.RateLimitError) as raised:
        client.messages.create(model="fake-chat", max_tokens=9, messages=messages)
    assert int(raised.value.response.headers["retry-after"]) > 0
    assert raised.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


SOURCE: Any = {"type": "base64", "media_type": "image/png", "data": PIXEL}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"unknown_field": 1}, "unknown_field"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
        ({"tools": [WEATHER, {"type": "bash_20250124", "name": "bash"}]}, "tools.1.type"),
        ({"tools": [{**WEATHER, "extra": 1}]}, "tools.0.extra"),
        ({"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}, "mcp_servers"),
        ({"container": "c_1"}, "container"),
        ({"diagnostics": {"previous_message_id": "msg_1"}}, "diagnostics"),
        ({"speed": "fast"}, "speed"),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
        ({"temperature": 1.5}, "temperature"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
         "messages.0.content.0.source.type"),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://x"}}]}]},
         "messages.0.content.0.source.type"),
        ({"messages": [{"role": "user", "content": [{"type": "search_result", "source": "s", "title": "t"}]}]},
         "messages.0.content.0.type"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "citations": [{}]}]}]},
            "messages.0.content.0.citations",
        ),
        (
            {"messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "file", "file_id": "f"}}
            ]}]},
            "messages.0.content.0.source.type",
        ),
        (
            {"messages": [{"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document", "source": SOURCE}]}
            ]}]},
            "messages.0.content.0.content.0.source.media_type",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]}]},
         "messages.0.content.0.type"),
        ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages.0.name"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}, "messages.0.content.0.text"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"metadata": {"user_id": "u", "other": 1}}, "metadata.other"),
    ],
)  # fmt: skip
def test_what_margin_cannot_honour_is_a_400_naming_it_before_anything_is_sent(
    gateway: Gateway, fields: dict[str, Any], param: str
) -> None:
    sent = len(gateway.live.bodies)
    body = {"model": "plain", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}], **fields}
    answer = gateway.post(body)
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith(f"{param}: "), error
    assert len(gateway.live.bodies) == sent


def test_an_unknown_field_is_the_sdk_s_bad_request_error(gateway: Gateway) -> None:
    messages: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.BadRequestError) as raised:
        gateway.client().messages.create(model="plain", max_tokens=9, messages=messages, extra_body={"bogus": 1})
    assert "bogus" in raised.value.message


def test_the_edge_s_own_errors_under_messages_are_anthropic_s(gateway: Gateway) -> None:
    """Errors before the endpoint runs (no route, the wrong method, a body that is not JSON) keep Anthropic's
    shape under /v1/messages, and OpenAI's elsewhere."""
    key = {"x-api-key": gateway.live.key}
    url = gateway.live.url
    missing = httpx.post(url + "/v1/messages/batches", json={}, headers=key, timeout=30)  # not served
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    wrong = httpx.get(url + "/v1/messages", headers=key, timeout=30)
    assert wrong.status_code == 405 and wrong.json()["type"] == "error"
    text = httpx.post(url + "/v1/messages", content=b"hi", headers={**key, "content-type": "text/plain"}, timeout=30)
    assert text.status_code == 415 and text.json()["error"]["type"] == "invalid_request_error"
    assert text.json()["type"] == "error"
    elsewhere = httpx.post(url + "/v1/nothing", json={}, headers=key, timeout=30)
    assert elsewhere.status_code == 404 and "type" not in elsewhere.json()  # OpenAI's: {"error": {...}}


def test_a_deterministic_request_is_answered_from_the_cache_as_a_message(gateway: Gateway) -> None:
    """The cache keys a Messages request as the chat that answers it: the second call (whole or streamed) is a
    hit, nothing more is sent upstream, and a hit's Message and row agree."""
    client = gateway.client()
    params: Any = {
        "model": "plain", "max_tokens": 30, "messages": [{"role": "user", "content": "cache me"}],
        "extra_body": {"temperature": 0},
    }  # fmt: skip
    first = client.messages.with_raw_response.create(**params)
    assert first.headers["x-margin-cache"] == "miss"
    sent = len(gateway.live.bodies)
    hit = client.messages.with_raw_response.create(**params)
    message = hit.parse()
    assert hit.headers["x-margin-cache"] == "hit-exact" and message.content[0].text == "hello world"
    row = gateway.live.row(hit.headers["x-request-id"])
    assert (row.endpoint, row.cost_nanousd) == ("messages", 0)  # a hit costs nothing; its saving is recorded
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens == row.input_tokens
    with client.messages.stream(**params) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == "hello world" and final.stop_reason == "end_turn"  # type: ignore[union-attr]
    assert len(gateway.live.bodies) == sent
