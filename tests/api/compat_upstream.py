"""An OpenAI-compatible upstream for the SDK compatibility tests: it keeps every request body it receives (what
left margin) and answers like OpenAI does, with what the request asked for: `n` choices, tool calls when tools
were sent (two, or one under `parallel_tool_calls: false`), streams with tool-call deltas and a usage chunk
when asked. The upstream model name picks a behaviour:

    plain      usage with `prompt_tokens_details` and `completion_tokens_details`
    nousage    no usage at all (JSON and streams), as many self-hosted servers answer
    reasoning  content, plus `reasoning_content` (vLLM, DeepSeek), no usage
    openrouter content, plus `reasoning` (OpenRouter, Ollama), no usage
    both       content, plus the same text in `reasoning_content` and in `reasoning` (recent vLLM), no usage
    reject     400 with an OpenAI error naming `param` (`temperature`)
    o-series   like OpenAI's reasoning models: `max_tokens` is refused (400), `max_completion_tokens` taken

`/v1/completions` (JSON) answers a text completion of one text prompt, echoed under `echo`.

Runs on a thread in the test process; `margin serve` reaches it over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.servers import http_thread, recording_handler, reply_events, reply_json

USAGE = {
    "prompt_tokens": 11,
    "completion_tokens": 6,
    "total_tokens": 17,
    "prompt_tokens_details": {"cached_tokens": 3, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0},
}
ARGUMENTS = json.dumps({"city": "Paris, France", "unit": "celsius", "days": 7})
REASONING = "The user greets me; a greeting back is polite and short, so I answer in two words. " * 4
# the upstream model → where its answers hold their reasoning
REASONING_KEYS = {
    "reasoning": ("reasoning_content",),
    "openrouter": ("reasoning",),
    "both": ("reasoning_content", "reasoning"),
}


@dataclass
class Upstream:
    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last(self) -> dict[str, Any]:
        return self.bodies[-1]


def _calls(body: dict[str, Any]) -> list[dict[str, Any]]:
    count = 1 if body.get("parallel_tool_calls") is False else 2
    function = {"name": "get_weather", "arguments": ARGUMENTS}
    return [{"id": f"call_{i}", "type": "function", "function": function} for i in range(count)]


def _message(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    if body.get("tools"):
        return {"role": "assistant", "content": None, "tool_calls": _calls(body), "refusal": None}, "tool_calls"
    message: dict[str, Any] = {"role": "assistant", "content": "hello there", "refusal": None}
    for key in REASONING_KEYS.get(str(body.get("model")), ()):
        message[key] = REASONING
    return message, "stop"


def _deltas(message: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield {"role": "assistant", "content": ""}
    if thought := {key: message[key] for key in ("reasoning_content", "reasoning") if key in message}:
        half = len(REASONING) // 2  # in two pieces: each delta's reasoning is its own
        yield {key: text[:half] for key, text in thought.items()}
        yield {key: text[half:] for key, text in thought.items()}
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call["function"]
        yield {"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                               "function": {"name": function["name"], "arguments": ""}}]}  # fmt: skip
        for half in (function["arguments"][:10], function["arguments"][10:]):
            yield {"tool_calls": [{"index": index, "function": {"arguments": half}}]}
    if message.get("content"):
        yield {"content": message["content"]}


def _events(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    base = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": body.get("model"),
            "system_fingerprint": "fp_up"}  # fmt: skip
    message, finish = _message(body)
    for index in range(body.get("n") or 1):
        for delta in _deltas(message):
            yield {**base, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}]}
        yield {**base, "choices": [{"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}]}
    if (body.get("stream_options") or {}).get("include_usage") and body.get("model") == "plain":
        yield {**base, "choices": [], "usage": USAGE}


def _answer(body: dict[str, Any]) -> dict[str, Any]:
    message, finish = _message(body)
    choice = {"message": message, "logprobs": None, "finish_reason": finish}
    choices = [{"index": i, **choice} for i in range(body.get("n") or 1)]
    answer = {"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": body.get("model"),
              "system_fingerprint": "fp_up", "choices": choices}  # fmt: skip
    return {**answer, "usage": USAGE} if body.get("model") == "plain" else answer


def _text_completion(body: dict[str, Any]) -> dict[str, Any]:
    """A legacy completion of one text prompt: `n` choices, each the prompt first under `echo`, as OpenAI
    answers."""
    text = (body["prompt"] if body.get("echo") else "") + " hello there"
    choices = [{"index": i, "text": text, "logprobs": None, "finish_reason": "stop"} for i in range(body.get("n") or 1)]
    answer = {"id": "cmpl-up", "object": "text_completion", "created": 1, "model": body.get("model")}
    answer["choices"] = choices
    return {**answer, "usage": USAGE} if body.get("model") == "plain" else answer


def _answer_to(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    if handler.path.endswith("/v1/completions") and not body.get("stream"):
        reply_json(handler, 200, _text_completion(body))
    elif body.get("model") == "reject":
        error = {"message": "temperature is not supported", "type": "invalid_request_error",
                 "param": "temperature", "code": "unsupported_value"}  # fmt: skip
        reply_json(handler, 400, {"error": error})
    elif body.get("model") == "o-series" and "max_tokens" in body:
        error = {"message": "Unsupported parameter: 'max_tokens'.", "type": "invalid_request_error",
                 "param": "max_tokens", "code": "unsupported_parameter"}  # fmt: skip
        reply_json(handler, 400, {"error": error})
    elif not body.get("stream"):
        reply_json(handler, 200, _answer(body))
    else:
        reply_events(handler, _events(body))


@contextmanager
def compat_upstream() -> Iterator[Upstream]:
    upstream = Upstream()
    with http_thread(recording_handler(upstream.bodies, _answer_to)) as base:
        upstream.url = f"{base}/v1"
        yield upstream
