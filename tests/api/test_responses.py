"""OpenAI's Responses API (`POST /v1/responses`) end to end: a running `margin serve`, real HTTP, the official
openai SDK as the client; the `fake` backend, and an OpenAI-like upstream that records the chat request margin
sends it. A Responses call runs the chat request path: keys, budgets, rate limits, the ledger row (which names
the endpoint `responses`), its usage and cost equal to what the answer says. What a stateless gateway cannot
do is a 400 naming the field before anything is sent. Before: every call was a 404."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
import yaml

from margin import keys
from margin.economics.money import from_nanousd
from margin.ledger import db as ledger_db
from tests.helpers import ledger_rows, margin_serve, wait_ledger_row
from tests.servers import http_thread, recording_handler, reply_events, reply_json

PRICE = {"input": "1", "output": "2"}  # $1 / $2 per million tokens: 1,000 / 2,000 nano-USD a token
GENERATED = 5
TIGHT_USD = "0.002"  # 1,000 output tokens at $2 per million
UPSTREAM_USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 7,
    "total_tokens": 19,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 2},
}
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}


def _message(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("tools") and not any(m["role"] == "tool" for m in body["messages"]):
        return {"role": "assistant", "content": None, "tool_calls": [CALL]}
    return {"role": "assistant", "content": "hello world"}


def _finish(body: dict[str, Any]) -> str:
    if body.get("max_tokens") == 3:
        return "length"
    return "tool_calls" if _message(body).get("tool_calls") else "stop"


def _events(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    head = {"id": "chatcmpl-u", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
    yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    if _message(body).get("tool_calls"):
        first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
        yield {**head, "choices": [{"index": 0, "delta": {"tool_calls": [first]}, "finish_reason": None}]}
        for piece in ('{"city":', '"Paris"}'):
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            yield {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    else:
        for piece in ("hello", " world"):
            yield {**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
    yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": _finish(body)}]}
    if (body.get("stream_options") or {}).get("include_usage"):
        yield {**head, "choices": [], "usage": UPSTREAM_USAGE}


def _answer(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    if body.get("stream"):
        reply_events(handler, _events(body))
        return
    choice = {"index": 0, "message": _message(body), "finish_reason": _finish(body)}
    answer = {"id": "chatcmpl-u", "object": "chat.completion", "created": 1, "model": body["model"],
              "choices": [choice], "usage": UPSTREAM_USAGE}  # fmt: skip
    reply_json(handler, 200, answer)


@dataclass
class Live:
    url: str
    db: Path
    key: str
    limited: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    clients: dict[str, openai.OpenAI] = field(default_factory=dict)  # closed with the fixture

    def client(self, key: str | None = None) -> openai.OpenAI:
        key = key or self.key
        if key not in self.clients:
            self.clients[key] = openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0)
        return self.clients[key]

    def row(self, request_id: str) -> Any:
        return wait_ledger_row(self.db, self.url, request_id)

    def post(self, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        auth = {"authorization": f"Bearer {key or self.key}"}
        return httpx.post(self.url + "/v1/responses", json=body, headers=auth, timeout=30)


def _keys(db: Path) -> tuple[str, str]:
    url = f"sqlite:///{db}"
    ledger_db.upgrade(url)
    engine = ledger_db.make_sync_engine(url)
    _, key = keys.create_key(engine, keys.NewKey("user", "t", {}, None, False, None))
    _, limited = keys.create_key(engine, keys.NewKey("limited", "limited", {}, None, False, None))
    engine.dispose()
    return key, limited


@contextmanager
def responses_gateway(folder: Path, **overrides: Any) -> Iterator[Live]:
    """A gateway with the fake backend and an OpenAI-like upstream that records what it is sent (tool calls
    while the request has tools and no tool output yet), its keys, a budget and a rate limit (`overrides`: more
    of the config)."""
    key, limited = _keys(folder / "ledger.db")
    bodies: list[dict[str, Any]] = []
    with http_thread(recording_handler(bodies, _answer)) as base:
        upstream = {"kind": "openai", "base_url": f"{base}/v1", "timeout_s": 10, "retries": {"attempts": 0}}
        openai_model = {"backend": "up", "upstream_model": "gpt-4.1-mini", "price": PRICE}
        config = {
            "storage": {"flush_interval_ms": 10},
            "backends": {
                "up": upstream,
                "fake": {"kind": "fake", "output_tokens": GENERATED},
                "cut": {"kind": "fake", "output_tokens": GENERATED, "fail_after_tokens": 2},
            },
            "models": {
                "plain": openai_model,
                "tight": openai_model,
                "fake-chat": {"backend": "fake", "price": PRICE},
                "cut-chat": {"backend": "cut", "price": PRICE},
            },
            "budgets": [{"name": "tight", "scope": {"kind": "model", "value": "tight"}, "usd": TIGHT_USD}],
            "limits": [{"scope": {"kind": "team", "value": "limited"}, "rpm": 1}],
            **overrides,
        }
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        serving = margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with serving as (url, _process):
            live = Live(url, folder / "ledger.db", key, limited, bodies)
            try:
                yield live
            finally:
                for client in live.clients.values():
                    client.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with responses_gateway(tmp_path_factory.mktemp("responses")) as gateway:
        yield gateway


def _usage_matches(usage: Any, row: Any) -> None:
    assert (usage.input_tokens, usage.output_tokens) == (row.input_tokens, row.output_tokens)
    assert usage.total_tokens == row.input_tokens + row.output_tokens
    assert row.cost_nanousd == row.input_tokens * 1000 + row.output_tokens * 2000


def test_a_json_answer_is_a_response_the_sdk_parses_and_its_row_names_the_endpoint(live: Live) -> None:
    raw = live.client().responses.with_raw_response.create(
        model="fake-chat", input="say something", instructions="be brief", store=False
    )
    response = raw.parse()
    request_id = raw.headers["x-request-id"]
    assert response.id == f"resp_{request_id}" and response.object == "response"
    assert response.status == "completed" and response.instructions == "be brief"
    assert response.output_text == "tok " * GENERATED
    message: Any = response.output[0]
    assert message.type == "message" and message.content[0].annotations == []
    row = live.row(request_id)
    assert (row.endpoint, row.http_status, row.stream) == ("responses", 200, False)
    _usage_matches(response.usage, row)
    assert Decimal(raw.headers["x-margin-cost-usd"]) == from_nanousd(row.cost_nanousd) > 0
    assert ledger_rows(live.db, request_id) == 1


def test_a_stream_has_openai_s_events_in_order_and_its_usage_is_the_row_s(live: Live) -> None:
    with live.client().responses.with_streaming_response.create(model="fake-chat", input="a b c", stream=True) as raw:
        request_id = raw.headers["x-request-id"]
        events: list[Any] = list(raw.parse())
    kinds = [event.type for event in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * GENERATED,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    done = events[-1].response
    assert done.output_text == "tok " * GENERATED and done.id == f"resp_{request_id}"
    row = live.row(request_id)
    assert (row.endpoint, row.stream, row.http_status) == ("responses", True, 200)
    _usage_matches(done.usage, row)


def test_the_stream_helper_s_final_response_has_the_row_s_usage(live: Live) -> None:
    with live.client().responses.stream(model="plain", input="hi", max_output_tokens=50) as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == final.output_text == "hello world"
    assert live.bodies[-1]["stream_options"] == {"include_usage": True}
    assert final.usage is not None
    assert final.usage.input_tokens_details.cached_tokens == 4
    assert final.usage.output_tokens_details.reasoning_tokens == 2
    row = live.row(final.id.removeprefix("resp_"))
    _usage_matches(final.usage, row)


def test_the_chat_request_sent_upstream_is_the_translation(live: Live) -> None:
    """instructions → a system message, items → messages, flat function tools → chat's nested ones,
    text.format → response_format, max_output_tokens → the output limit (max_tokens). `metadata` is the
    Response's own (echoed), not sent: OpenAI refuses a chat's `metadata` without `store: true`."""
    schema: Any = {"type": "object", "properties": {"a": {"type": "string"}}}
    items: Any = [
        {"role": "developer", "content": "no chatter"},
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "where?"}]},
        {"role": "user", "content": "Paris"},
    ]
    text: Any = {"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}}
    response = live.client().responses.create(
        model="plain",
        instructions="be terse",
        input=items,
        tools=[WEATHER],
        tool_choice="auto",
        parallel_tool_calls=False,
        text=text,
        max_output_tokens=40,
        temperature=0.5,
        top_p=0.9,
        metadata={"ticket": "42"},
        user="u-1",
        store=False,
    )
    assert live.bodies[-1] == {
        "model": "gpt-4.1-mini",
        "messages": [
            {"role": "system", "content": "be terse"},
            {"role": "developer", "content": "no chatter"},
            {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "where?"}]},
            {"role": "user", "content": "Paris"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "The weather in a city",
                    "parameters": WEATHER["parameters"],
                    "strict": True,
                },
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}},
        "max_tokens": 40,
        "temperature": 0.5,
        "top_p": 0.9,
        "user": "u-1",
    }
    assert response.metadata == {"ticket": "42"}


def test_every_image_detail_the_sdk_sends_reaches_the_upstream(live: Live) -> None:
    """`input_image.detail` takes the SDK's `ImageDetail` values, `original` included (chat's image part takes
    it too). Before: `original` was a 400."""
    for detail in ("low", "high", "auto", "original"):
        image: Any = {"type": "input_image", "image_url": "https://x/cat.png", "detail": detail}
        answer = live.client().responses.create(
            model="plain", input=[{"role": "user", "content": [image]}], store=False
        )
        assert answer.output_text == "hello world"
        (message,) = live.bodies[-1]["messages"]
        assert message["content"] == [
            {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": detail}}
        ]


def test_function_calls_round_trip(live: Live) -> None:
    """The answer's function_call item, then its output in the next request: the upstream gets the assistant's
    tool call and the tool's message, as a chat carries them."""
    client = live.client()
    first = client.responses.create(model="plain", input="weather in Paris?", tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [("call_1", "get_weather", '{"city":"Paris"}')]
    assert first.tools[0].type == "function" and first.tools[0].name == "get_weather"
    follow: Any = [
        {"role": "user", "content": "weather in Paris?"},
        *first.output,  # the answer's items as the SDK gives them back
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    second = client.responses.create(model="plain", input=follow, tools=[WEATHER])
    assert second.output_text == "hello world"
    assert live.bodies[-1]["messages"] == [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]


def test_text_after_its_calls_is_sent_back_in_their_assistant_message(live: Live) -> None:
    """A streamed answer whose text came after its tool calls has output [function_call, message]; sent back with
    the call's output, the upstream gets one assistant message (the text and the calls), then the tool message: a
    chat with an assistant message between tool calls and their results is a 400 at OpenAI. Before: two
    assistant messages, the calls' then the text's."""
    items: Any = [
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}',
         "id": "fc_1", "status": "completed"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}],
         "id": "msg_1", "status": "completed"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]  # fmt: skip
    answer = live.client().responses.create(model="plain", input=items, tools=[WEATHER], store=False)
    assert answer.output_text == "hello world"
    assert live.bodies[-1]["messages"] == [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."}], "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]


def test_a_streamed_function_call(live: Live) -> None:
    with live.client().responses.stream(model="plain", input="weather?", tools=[WEATHER]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    (call,) = final.output
    assert call.type == "function_call" and (call.call_id, call.arguments) == ("call_1", '{"city":"Paris"}')


def test_a_stream_that_breaks_ends_with_an_error_event_and_response_failed(live: Live) -> None:
    """The backend cuts the stream after two tokens: the client gets them, then OpenAI's `error` event and
    `response.failed` (no `response.completed`); the SDK reads it all without raising, and the row says so.
    `response.failed` carries the usage the row bills (before: `usage: null`, while the row billed the tokens)."""
    with live.client().responses.with_streaming_response.create(model="cut-chat", input="a b", stream=True) as raw:
        request_id = raw.headers["x-request-id"]
        events: list[Any] = list(raw.parse())
    kinds = [event.type for event in events]
    assert kinds.count("response.output_text.delta") == 2
    assert kinds[-2:] == ["error", "response.failed"] and "response.completed" not in kinds
    assert events[-1].response.status == "failed" and events[-1].response.error.code == events[-2].code
    row = live.row(request_id)
    assert (row.endpoint, row.status) == ("responses", "upstream_error")
    assert events[-1].response.usage is not None and row.output_tokens > 0
    _usage_matches(events[-1].response.usage, row)


@pytest.mark.parametrize("stream", [False, True])
def test_a_length_finish_is_incomplete(live: Live, stream: bool) -> None:
    body = {"model": "plain", "input": "hi", "max_output_tokens": 3, "stream": stream}
    answer = live.post(body)
    assert answer.status_code == 200
    row = live.row(answer.headers["x-request-id"])
    if stream:
        lines = answer.text.splitlines()
        data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
        assert data[-1]["type"] == "response.incomplete"
        response = data[-1]["response"]
        # the closing comment carries the cost, as a chat stream's; no `[DONE]`
        assert f": x-margin-cost-usd={from_nanousd(row.cost_nanousd):.9f}" in answer.text
        assert "[DONE]" not in answer.text
    else:
        response = answer.json()
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert live.bodies[-1]["max_tokens"] == 3
    usage = response["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (row.input_tokens, row.output_tokens)


def test_a_budget_refuses_before_anything_is_sent(live: Live) -> None:
    sent = len(live.bodies)
    refused = live.post({"model": "tight", "input": "hi", "max_output_tokens": 5000})
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert len(live.bodies) == sent
    row = live.row(refused.headers["x-request-id"])
    assert (row.endpoint, row.http_status) == ("responses", 429)
    assert live.post({"model": "tight", "input": "hi", "max_output_tokens": 100}).status_code == 200


def test_rate_limits_and_keys_apply(live: Live) -> None:
    assert live.post({"model": "fake-chat", "input": "hi"}, key=live.limited).status_code == 200
    limited = live.post({"model": "fake-chat", "input": "hi"}, key=live.limited)
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.AuthenticationError):
        live.client("sk-margin-unknown").responses.create(model="fake-chat", input="hi")


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id", "unsupported_parameter"),
        ({"conversation": "conv_1"}, "conversation", "unsupported_parameter"),
        ({"background": True}, "background", "unsupported_parameter"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "unsupported_parameter"),
        ({"store": True}, "store", "unsupported_value"),
        ({"truncation": "auto"}, "truncation", "unsupported_value"),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type", "unsupported_value"),
        ({"tools": [WEATHER, {"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools.1.type", None),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools.0.type", "unsupported_value"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice", "unsupported_value"),
        ({"reasoning": {"summary": "brief"}}, "reasoning.summary", "invalid_value"),
        ({"tool_choice": {"type": "allowed_tools", "mode": "any", "tools": []}}, "tool_choice.mode", None),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type", "unsupported_value"),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input.0.type", "unsupported_value"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input.0.content.0.file_id",
            "unsupported_value",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_url": "https://x/a.pdf"}]}]},
            "input.0.content.0.file_url",
            "unsupported_value",
        ),
        (
            {"input": [{"role": "assistant", "content": [{"type": "input_file", "file_data": "data:,x"}]}]},
            "input.0.content.0",
            "unsupported_value",
        ),
        ({"unknown_field": 1}, "unknown_field", None),
        ({"input": [{"role": "user", "content": "x", "cache_control": {}}]}, "input.0.cache_control", None),
        (
            {"input": [{"type": "function_call_output", "call_id": "c", "output": "x", "extra": 1}]},
            "input.0.extra",
            None,
        ),
        ({"temperature": "0.5"}, "temperature", None),
        ({"max_output_tokens": 0}, "max_output_tokens", None),
        ({"input": [{"role": "tool", "content": "x"}]}, "input.0.role", None),
        ({"text": {"format": {"type": "json_schema"}}}, "text.format", None),
        ({"metadata": {"k": 1}}, "metadata.k", None),
        ({"metadata": {"k" * 65: "v"}}, "metadata." + "k" * 65, None),  # OpenAI's bound on keys: 64 characters
        ({"stream": "yes"}, "stream", None),
        # OpenAI's tiers margin has no price for (Scale Tier's prepaid capacity), or names it does not serve as
        # (`fast` is served as `priority`), and a priced tier the model's backend does not list
        ({"service_tier": "scale"}, "service_tier", None),
        ({"service_tier": "fast"}, "service_tier", None),
        ({"service_tier": "ultrafast"}, "service_tier", None),
        ({"service_tier": "flex"}, "service_tier", "unsupported_value"),
    ],
)
def test_what_margin_cannot_honour_is_a_400_naming_it_before_anything_is_sent(
    live: Live, fields: dict[str, Any], param: str, code: str | None
) -> None:
    sent = len(live.bodies)
    answer = live.post({"model": "plain", "input": "hi", **fields})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    if code is not None:
        assert error["code"] == code
    assert len(live.bodies) == sent


def test_a_deterministic_request_is_answered_from_the_cache_as_a_response(live: Live) -> None:
    """The cache keys a Responses request as the chat that answers it: the second call (JSON or streamed) and
    the same chat are hits, nothing more is sent upstream, and a hit's Response and row agree."""
    client = live.client()
    first = client.responses.with_raw_response.create(model="plain", input="cache me", temperature=0)
    assert first.headers["x-margin-cache"] == "miss"
    sent = len(live.bodies)
    hit = client.responses.with_raw_response.create(model="plain", input="cache me", temperature=0)
    assert hit.headers["x-margin-cache"] == "hit-exact" and hit.parse().output_text == "hello world"
    usage, row = hit.parse().usage, live.row(hit.headers["x-request-id"])
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (row.input_tokens, row.output_tokens)
    assert (row.endpoint, row.cost_nanousd) == ("responses", 0)  # a hit costs nothing; its saving is recorded
    events: list[Any] = list(client.responses.create(model="plain", input="cache me", temperature=0, stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "hello world"
    chat = client.chat.completions.with_raw_response.create(
        model="plain", messages=[{"role": "user", "content": "cache me"}], temperature=0
    )
    assert chat.headers["x-margin-cache"] == "hit-exact"
    assert len(live.bodies) == sent


def test_margin_report_by_endpoint_shows_the_responses_rows(live: Live) -> None:
    client = live.client()
    chat = client.chat.completions.with_raw_response.create(
        model="fake-chat", messages=[{"role": "user", "content": "x"}]
    )
    raw = client.responses.with_raw_response.create(model="fake-chat", input="count me")
    live.row(chat.headers["x-request-id"])
    live.row(raw.headers["x-request-id"])
    result = subprocess.run(
        [sys.executable, "-m", "margin", "report", "--db", str(live.db), "--by", "endpoint", "--json"],
        capture_output=True,
        check=True,
        timeout=120,
    )
    groups = {group["key"]: group for group in json.loads(result.stdout)["groups"]}
    assert groups["responses"]["requests"] == _count(live, "responses") > 0
    assert groups["chat.completions"]["requests"] == _count(live, "chat.completions") > 0


def _count(live: Live, endpoint: str) -> int:
    engine = ledger_db.make_sync_engine(f"sqlite:///{live.db}")
    try:
        with engine.connect() as connection:
            query = sa.text("SELECT count(*) FROM ledger WHERE endpoint = :endpoint")
            return int(connection.execute(query, {"endpoint": endpoint}).scalar_one())
    finally:
        engine.dispose()


def test_with_storage_off_store_and_continuing_say_how_to_turn_it_on_and_nothing_is_stored(live: Live) -> None:
    for fields in ({"store": True}, {"previous_response_id": "resp_1"}):
        answer = live.post({"model": "plain", "input": "hi", **fields})
        assert answer.status_code == 400 and "`responses.store`" in answer.json()["error"]["message"]
    created = live.client().responses.create(model="fake-chat", input="hi")  # `store` left out: not stored
    assert created.model_dump()["store"] is False
    auth = {"authorization": f"Bearer {live.key}"}
    found = httpx.get(f"{live.url}/v1/responses/{created.id}", headers=auth, timeout=30)
    assert found.status_code == 404 and found.json()["error"]["code"] == "not_found"
