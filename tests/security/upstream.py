"""A recording OpenAI-compatible upstream for attack tests: it keeps every request body it receives (what
left margin) and answers with a scripted text, whole or streamed in the given pieces, optionally as tool-call
arguments. Runs on a thread in the test process; `margin serve` reaches it over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.servers import http_thread, recording_handler, reply_events, reply_json


@dataclass
class Script:
    pieces: list[str] = field(default_factory=lambda: ["ok"])  # the answer, in the chunks a stream sends
    tool_arguments: list[str] | None = None  # answer with one tool call whose arguments arrive in these pieces


@dataclass
class Upstream:
    url: str
    script: Script
    bodies: list[dict[str, Any]]

    @property
    def last(self) -> dict[str, Any]:
        return self.bodies[-1]

    def seen(self) -> str:
        """Everything the upstream received, as one JSON text (to search for values that must not be there)."""
        return json.dumps(self.bodies, ensure_ascii=False)


def _usage(body: dict[str, Any], script: Script) -> dict[str, int]:
    return {"prompt_tokens": 7, "completion_tokens": len(script.pieces), "total_tokens": 7 + len(script.pieces)}


def _message(script: Script) -> dict[str, Any]:
    if script.tool_arguments is None:
        return {"role": "assistant", "content": "".join(script.pieces)}
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "send", "arguments": "".join(script.tool_arguments)},
    }
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def _events(body: dict[str, Any], script: Script) -> Iterator[dict[str, Any]]:
    base = {"id": "up-1", "object": "chat.completion.chunk", "created": 0, "model": body.get("model")}
    if script.tool_arguments is None:
        for piece in script.pieces:
            yield {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        finish = "stop"
    else:
        for position, piece in enumerate(script.tool_arguments):
            function = {"arguments": piece, **({"name": "send"} if position == 0 else {})}
            call = {"index": 0, "function": function, **({"id": "call_1", "type": "function"} if position == 0 else {})}
            yield {**base, "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}
        finish = "tool_calls"
    yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
    if (body.get("stream_options") or {}).get("include_usage"):
        yield {**base, "choices": [], "usage": _usage(body, script)}


def _answer_with(script: Script) -> Callable[[BaseHTTPRequestHandler, dict[str, Any]], None]:
    def answer(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        if body.get("stream"):
            reply_events(handler, _events(body, script))
            return
        choice = {"index": 0, "message": _message(script), "finish_reason": "stop"}
        answer = {"id": "up-1", "object": "chat.completion", "created": 0, "model": body.get("model"),
                  "choices": [choice], "usage": _usage(body, script)}  # fmt: skip
        reply_json(handler, 200, answer)

    return answer


@contextmanager
def recording_upstream(script: Script | None = None) -> Iterator[Upstream]:
    upstream = Upstream("", script or Script(), [])
    with http_thread(recording_handler(upstream.bodies, _answer_with(upstream.script))) as base:
        upstream.url = f"{base}/v1"
        yield upstream


def upstream_config(upstream: Upstream) -> dict[str, Any]:
    """`served(...)` overrides: model `up` on the recording upstream (list-priced), beside the fake ones."""
    return {
        "backends": {
            "fake": {"kind": "fake", "output_tokens": 5, "region": "eu"},
            "up": {"kind": "openai", "base_url": upstream.url, "timeout_s": 10, "region": "eu"},
        },
        "models": {
            "fake-chat": {"backend": "fake", "price": {"input": "1", "output": "1"}},
            "up": {"backend": "up", "upstream_model": "up-model", "price": {"input": "1", "output": "1"}},
        },
    }
