"""A fake Anthropic Messages API (`POST /v1/messages`, and `/v1/messages/count_tokens`, whose count is
`counted(body)`) on a thread: it keeps every request's body and headers
(what left margin) and answers in Anthropic's wire format, a message or an SSE stream of `message_start`,
`content_block_start/delta/stop`, `ping`, `message_delta` and `message_stop` (shapes as the `anthropic` SDK's
types and Anthropic's streaming documentation give them). The upstream model name picks a behaviour:

    claude-sonnet-4-5   text, or a tool call while the request has tools and no tool result yet; usage with
                        cache reads and writes (`USAGE`); the text stops before `STOP_SEQUENCE` when the
                        request's `stop_sequences` hold it (`stop_reason: stop_sequence`, the sequence named)
    thinker             a thinking block before its text (its tokens are in `output_tokens`)
    paged               usage of 150,000 input tokens (`PAGED`: a 100-page PDF as Anthropic bills it)
    interleaved         interleaved thinking (`INTERLEAVED`): thinking, a tool call, thinking again, then text
    leaky               asked for thinking, thinks about PII (`LEAKY_THOUGHTS`: an e-mail and a card number,
                        each split over two thinking deltas when streamed)

Any model, asked for thinking (`thinking: {type: enabled}`), answers with a thinking and a redacted_thinking block
first (`THOUGHTS`); and, as Anthropic does, refuses (400 `invalid_request_error`) a request with thinking on whose
last turn holds a tool result unless the assistant turn before it starts with those exact blocks (`interleaved`:
unless it is `INTERLEAVED` whole, each block in its place).
    overloaded          529 `overloaded_error` every time
    broken              500 `api_error` every time
    flaky               529 once, then like claude-sonnet-4-5 (a retry succeeds)
    limited             429 `rate_limit_error` with `retry-after: 30`
    rejecting           400 `invalid_request_error`
    overflowing         400 `invalid_request_error` "prompt is too long: 210118 tokens > 200000 maximum" (`OVERFLOW`)
    midstream           a stream that sends some text, then an `error` event
    cut                 a stream that breaks off before `message_stop`

Runs on a thread in the test process; `margin serve` reaches it over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.servers import http_thread, read_json, reply_json

# the function tool the tests send (chat's shape)
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

# model `paged`: a PDF of 100 pages, ~1.5K tokens each, as Anthropic bills it (its bytes count for little)
PAGED = {"input_tokens": 150_000, "output_tokens": 9}
USAGE = {"input_tokens": 21, "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 3000, "output_tokens": 9}
TEXT = ("hello", " world")
STOP_SEQUENCE = " world"  # a request whose `stop_sequences` hold it stops there: `stop_sequence`, with it named
THINKING = "The user says hi; I answer briefly."
INPUT = {"city": "Paris"}
ARGUMENTS_PIECES = ('{"city":', ' "Paris"}')
# what a request with thinking on is answered with first: opaque signatures and data, bytes a translation would
# change (`+`, `/`, `=`, a non-ASCII character, an escaped quote) included
THINKING_PIECES = ("Paris is a city; ", "I should look the weather up.")
SIGNATURE = 'EuYBCkQYAiJA+/9z=="é\\u00e9sig'
REDACTED = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIw+/redacted=="
THOUGHTS: list[dict[str, Any]] = [
    {"type": "thinking", "thinking": "".join(THINKING_PIECES), "signature": SIGNATURE},
    {"type": "redacted_thinking", "data": REDACTED},
]
OVERFLOW = "prompt is too long: 210118 tokens > 200000 maximum"  # Anthropic's sentence (Claude Code compacts on it)
LEAKY_EMAIL, LEAKY_CARD = "jane.doe@example.com", "4111 1111 1111 1111"
LEAKY_PIECES = ("They wrote from jane.doe@exa", "mple.com and paid with 4111 1111 ", "1111 1111; look it up.")
LEAKY_THOUGHTS: list[dict[str, Any]] = [
    {"type": "thinking", "thinking": "".join(LEAKY_PIECES), "signature": SIGNATURE},
    {"type": "redacted_thinking", "data": REDACTED},
]
_PIECES = {"".join(pieces): pieces for pieces in (THINKING_PIECES, LEAKY_PIECES)}
INTERLEAVED: list[dict[str, Any]] = [
    {"type": "thinking", "thinking": "".join(THINKING_PIECES), "signature": SIGNATURE},
    {"type": "tool_use", "id": "toolu_01I", "name": "get_weather", "input": INPUT},
    {"type": "thinking", "thinking": "While it runs: say hello.", "signature": "c2lnMg=="},
    {"type": "text", "text": "".join(TEXT)},
]


@dataclass
class Upstream:
    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    tries: dict[str, int] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)

    @property
    def last(self) -> dict[str, Any]:
        return self.bodies[-1]

    def record(self, handler: BaseHTTPRequestHandler) -> Any:
        """A request's JSON body, its headers (lower-cased names) and path, kept; the body is returned."""
        body = read_json(handler)
        self.bodies.append(body)
        self.headers.append({name.lower(): value for name, value in handler.headers.items()})
        self.paths.append(handler.path)
        return body


def counted(body: dict[str, Any]) -> int:
    """`/v1/messages/count_tokens`'s answer: a number that depends on everything it was sent (the model too)."""
    return len(json.dumps(body, sort_keys=True)) // 4


def _wants_tool(body: dict[str, Any]) -> bool:
    last = body["messages"][-1]
    content = last["content"] if isinstance(last["content"], list) else []
    return bool(body.get("tools")) and not any(block.get("type") == "tool_result" for block in content)


def _thinking_on(body: dict[str, Any]) -> bool:
    return (body.get("thinking") or {}).get("type") == "enabled"


def thinking_refused(body: dict[str, Any]) -> str | None:
    """Anthropic's refusal of a tool result after an assistant turn that does not start with its thinking (when
    thinking is on): None when the request is fine."""
    turns = body["messages"]
    if not _thinking_on(body) or len(turns) < 2 or _wants_tool(body) or not body.get("tools"):
        return None
    assistant = turns[-2]["content"]
    if body["model"] == "interleaved" and assistant == INTERLEAVED:  # its blocks back whole, in their order
        return None
    if body["model"] != "interleaved" and isinstance(assistant, list) and assistant[: len(THOUGHTS)] == THOUGHTS:
        return None
    return (
        f"messages.{len(turns) - 2}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
        "another block. When `thinking` is enabled, a final `assistant` message must start with a thinking block"
    )


def _blocks(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    if body["model"] == "interleaved":
        return [dict(block) for block in INTERLEAVED], "end_turn"
    chosen = LEAKY_THOUGHTS if body["model"] == "leaky" else THOUGHTS
    thoughts = [dict(block) for block in chosen] if _thinking_on(body) else []
    if _wants_tool(body):
        tool = {"type": "tool_use", "id": "toolu_01A", "name": body["tools"][0]["name"], "input": INPUT}
        return [*thoughts, {"type": "text", "text": "Let me look."}, tool], "tool_use"
    stopped = STOP_SEQUENCE in (body.get("stop_sequences") or ())
    text = "".join(TEXT)
    blocks = [*thoughts, {"type": "text", "text": text[: text.index(STOP_SEQUENCE)] if stopped else text}]
    if body["model"] == "thinker":
        blocks.insert(0, {"type": "thinking", "thinking": THINKING, "signature": "c2ln"})
    if stopped:
        return blocks, "stop_sequence"
    return blocks, "max_tokens" if body.get("max_tokens") == 3 else "end_turn"


def message(body: dict[str, Any]) -> dict[str, Any]:
    blocks, stop = _blocks(body)
    sequence = STOP_SEQUENCE if stop == "stop_sequence" else None
    return {"id": "msg_01", "type": "message", "role": "assistant", "model": body["model"], "content": blocks,
            "stop_reason": stop, "stop_sequence": sequence,
            "usage": PAGED if body["model"] == "paged" else USAGE}  # fmt: skip


def _block_events(index: int, block: dict[str, Any]) -> Iterator[dict[str, Any]]:
    kind = block["type"]
    empty: dict[str, dict[str, Any]] = {
        "text": {"type": "text", "text": ""},
        "thinking": {"type": "thinking", "thinking": ""},  # as Anthropic's streaming documentation shows it
    }
    start = empty.get(kind) or (block if kind == "redacted_thinking" else {**block, "input": {}})
    yield {"type": "content_block_start", "index": index, "content_block": start}
    if kind == "text":
        for piece in TEXT if block["text"] == "".join(TEXT) else (block["text"],):
            yield {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}}
    elif kind == "thinking":
        pieces = _PIECES.get(block["thinking"], (block["thinking"],))
        for piece in pieces:
            yield {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "thinking_delta", "thinking": piece},
            }
        signature = {"type": "signature_delta", "signature": block["signature"]}
        yield {"type": "content_block_delta", "index": index, "delta": signature}
    elif kind == "tool_use":
        for piece in ARGUMENTS_PIECES:
            delta = {"type": "input_json_delta", "partial_json": piece}
            yield {"type": "content_block_delta", "index": index, "delta": delta}
    yield {"type": "content_block_stop", "index": index}


def events(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    whole = message(body)
    start = {**whole, "content": [], "stop_reason": None, "usage": {**USAGE, "output_tokens": 1}}
    yield {"type": "message_start", "message": start}
    yield {"type": "ping"}
    for index, block in enumerate(whole["content"]):
        yield from _block_events(index, block)
        if body["model"] == "midstream":
            error = {"type": "overloaded_error", "message": "Overloaded (secret-host-42)"}
            yield {"type": "error", "error": error}
            return
    if body["model"] == "cut":
        return
    delta = {"stop_reason": whole["stop_reason"], "stop_sequence": whole["stop_sequence"]}
    yield {"type": "message_delta", "delta": delta, "usage": {"output_tokens": USAGE["output_tokens"]}}
    yield {"type": "message_stop"}


def _reply_stream(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    handler.send_response(200)
    handler.send_header("content-type", "text/event-stream")
    handler.end_headers()
    for event in events(body):
        handler.wfile.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        handler.wfile.flush()
    handler.close_connection = True


def _error(
    handler: BaseHTTPRequestHandler, status: int, kind: str, headers: dict[str, str] | None = None, message: str = ""
) -> None:
    error = {"type": kind, "message": message or f"{kind} (internal-host-7)"}
    data = json.dumps({"type": "error", "error": error}).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


def _answer(upstream: Upstream, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    model = body.get("model", "")
    upstream.tries[model] = tries = upstream.tries.get(model, 0) + 1
    if model == "overloaded" or (model == "flaky" and tries == 1):
        _error(handler, 529, "overloaded_error")
    elif model == "broken":
        _error(handler, 500, "api_error")
    elif model == "limited":
        _error(handler, 429, "rate_limit_error", {"retry-after": "30"})
    elif model == "rejecting":
        _error(handler, 400, "invalid_request_error")
    elif model == "overflowing":
        _error(handler, 400, "invalid_request_error", message=f"{OVERFLOW} (internal-host-7)")
    elif (refusal := thinking_refused(body)) is not None:
        _error(handler, 400, "invalid_request_error", message=refusal)
    elif body.get("stream"):
        _reply_stream(handler, body)
    else:
        reply_json(handler, 200, message(body))


def _handler(upstream: Upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_POST(self) -> None:
            body = upstream.record(self)
            if self.path == "/v1/messages/count_tokens" and body.get("model") == "rejecting":
                _error(self, 400, "invalid_request_error")
            elif self.path == "/v1/messages/count_tokens":
                reply_json(self, 200, {"input_tokens": counted(body)})
            elif self.path != "/v1/messages":
                reply_json(self, 404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})
            else:
                _answer(upstream, self, body)

    return Handler


@contextmanager
def anthropic_upstream() -> Iterator[Upstream]:
    upstream = Upstream()
    with http_thread(_handler(upstream)) as base:
        upstream.url = f"{base}/v1"
        yield upstream
