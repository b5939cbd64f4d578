"""A fake vLLM server for the token-count tests, over real HTTP (`servers.http_thread`): `POST /tokenize` at its
root (vLLM's `TokenizeChatRequest` in, its `TokenizeResponse` out) and `POST /v1/chat/completions` (an answer, or
a stream, whose `usage.prompt_tokens` is the count `/tokenize` gives the same messages and tools), every request
recorded (its path, headers and body). A `/tokenize` body with a field vLLM's chat form does not have, or
without `add_generation_prompt: true`, is a 400, so what margin sends is held to that shape.

The upstream model name picks a bad `/tokenize` answer: `text` (a count that is a string), `negative`, `huge`
(2^31), `fraction` (3.5), `missing` (no count), `html` (200 with an HTML page), `broken` (500), `slow` (the
answer after `SLOW_S`)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.backends.anthropic_upstream import Upstream
from tests.servers import http_thread, reply_events, reply_json

SLOW_S = 3.0
# vLLM's TokenizeChatRequest (vllm/entrypoints/openai/protocol.py): the fields a chat prompt's tokenizing takes
TOKENIZE_FIELDS = frozenset(
    {"model", "messages", "add_generation_prompt", "continue_final_message", "add_special_tokens", "chat_template",
     "chat_template_kwargs", "mm_processor_kwargs", "tools", "return_token_strs"}
)  # fmt: skip
BAD: dict[str, Any] = {"text": "12", "negative": -1, "huge": 2**31, "fraction": 3.5}


def tokenized(body: dict[str, Any]) -> int:
    """The fake's token count of a chat prompt: a number that depends on its messages and tools (and nothing else
    a completion sends, as vLLM's does not)."""
    return len(json.dumps({"messages": body["messages"], "tools": body.get("tools")}, sort_keys=True)) // 4


def _tokenize(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    model = body.get("model")
    if set(body) - TOKENIZE_FIELDS or body.get("add_generation_prompt") is not True:
        reply_json(handler, 400, {"object": "error", "message": f"unexpected fields: {sorted(body)}", "code": 400})
    elif model in BAD:
        reply_json(handler, 200, {"count": BAD[model], "max_model_len": 4096, "tokens": []})
    elif model == "missing":
        reply_json(handler, 200, {"max_model_len": 4096, "tokens": []})
    elif model == "broken":
        reply_json(handler, 500, {"object": "error", "message": "engine died (internal-host-7)", "code": 500})
    elif model == "html":
        page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        handler.send_response(200)
        handler.send_header("content-type", "text/html")
        handler.send_header("content-length", str(len(page)))
        handler.end_headers()
        handler.wfile.write(page)
    else:
        if model == "slow":
            time.sleep(SLOW_S)
        count = tokenized(body)
        with contextlib.suppress(ConnectionError):  # `slow`: margin stopped waiting and went
            reply_json(handler, 200, {"count": count, "max_model_len": 4096, "tokens": list(range(count))})


def _complete(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    usage = {"prompt_tokens": tokenized(body), "completion_tokens": 2, "total_tokens": tokenized(body) + 2}
    head = {"id": "chatcmpl-vllm", "created": 0, "model": body["model"]}
    if body.get("stream"):
        delta = {"index": 0, "delta": {"role": "assistant", "content": "hi there"}, "finish_reason": None}
        done = {"index": 0, "delta": {}, "finish_reason": "stop"}
        chunks = [{**head, "object": "chat.completion.chunk", "choices": [choice]} for choice in (delta, done)]
        reply_events(handler, [*chunks, {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}])
        return
    message = {"role": "assistant", "content": "hi there"}
    choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
    reply_json(handler, 200, {**head, "object": "chat.completion", "choices": [choice], "usage": usage})


def _handler(upstream: Upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_POST(self) -> None:
            body = upstream.record(self)
            if self.path == "/tokenize":
                _tokenize(self, body)
            elif self.path == "/v1/chat/completions":
                _complete(self, body)
            else:
                reply_json(self, 404, {"object": "error", "message": "Not Found", "code": 404})

    return Handler


@contextmanager
def vllm_upstream() -> Iterator[Upstream]:
    """The fake vLLM server; `upstream.url` is its base URL as a backend names it (ending in /v1)."""
    upstream = Upstream()
    with http_thread(_handler(upstream)) as base:
        upstream.url = f"{base}/v1"
        yield upstream
