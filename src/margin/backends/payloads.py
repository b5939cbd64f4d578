"""OpenAI response shapes built by the backends that generate text themselves (llamacpp, fake)."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import orjson

from margin.errors import InvalidRequest
from margin.protocol import ChatCompletionRequest, CompactRequest, CompletionRequest, EmbeddingRequest, Endpoint
from margin.types import Call, Usage


def _choice(call: Call, text: str, finish_reason: str | None, *, delta: bool, index: int = 0) -> dict[str, Any]:
    if call.endpoint is Endpoint.COMPLETIONS:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
    if delta:
        return {
            "index": index,
            "delta": {"content": text} if text else {},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
    message = {"role": "assistant", "content": text, "refusal": None}
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def _object(call: Call, *, chunk: bool) -> str:
    if call.endpoint is Endpoint.COMPLETIONS:
        return "text_completion"
    return "chat.completion.chunk" if chunk else "chat.completion"


def completion(call: Call, text: str, finish_reason: str, usage: Usage, *, copies: int = 1) -> dict[str, Any]:
    """A whole answer; `copies`: that many choices of the same text (the fake's `n`)."""
    return {
        "id": call.response_id,
        "object": _object(call, chunk=False),
        "created": int(time.time()),
        "model": call.public_model,
        "choices": [_choice(call, text, finish_reason, delta=False, index=i) for i in range(copies)],
        "usage": usage.to_openai(),
    }


def chunk(
    call: Call, text: str, finish_reason: str | None = None, *, first: bool = False, index: int = 0
) -> dict[str, Any]:
    choice = _choice(call, text, finish_reason, delta=True, index=index)
    if first and call.endpoint is Endpoint.CHAT:
        choice["delta"] = {"role": "assistant", **choice["delta"]}
    return {
        "id": call.response_id,
        "object": _object(call, chunk=True),
        "created": int(time.time()),
        "model": call.public_model,
        "choices": [choice],
    }


STREAM_IDENTITY = ("id", "created", "model", "system_fingerprint")  # the same in every event of an OpenAI stream


def usage_chunk(call: Call, usage: Usage, like: Any = None) -> dict[str, Any]:
    """A stream's usage event; `like`: the stream's first event (an upstream's), whose id, creation time, model
    and fingerprint it repeats, as every event of one stream does (it said margin's id and time instead)."""
    payload = {
        "id": call.response_id,
        "object": _object(call, chunk=True),
        "created": int(time.time()),
        "model": call.public_model,
        "choices": [],
        "usage": usage.to_openai(),
    }
    if isinstance(like, dict):
        payload |= {key: like[key] for key in STREAM_IDENTITY if key in like}
    return payload


def embeddings(
    call: Call, vectors: Sequence[Sequence[float]], input_tokens: int, encoding_format: str
) -> dict[str, Any]:
    data = []
    for index, vector in enumerate(vectors):
        if encoding_format == "base64":
            packed = struct.pack(f"<{len(vector)}f", *vector)
            value: Any = base64.b64encode(packed).decode("ascii")
        else:
            value = [float(x) for x in vector]
        data.append({"object": "embedding", "index": index, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": call.public_model,
        "usage": {"prompt_tokens": input_tokens, "total_tokens": input_tokens},
    }


def fixed_dimensions(call: Call, dimensions: int) -> None:
    """An embedder of fixed width (the local model, the fake) refuses another `dimensions`, never answers at its
    own width as if it had been honoured."""
    asked = getattr(call.request, "dimensions", None)
    if asked is not None and asked != dimensions:
        raise InvalidRequest(
            f"{call.public_model} has {dimensions} dimensions; dimensions cannot change it",
            param="dimensions",
            code="unsupported_parameter",
        )


def prompt_text(call: Call) -> str:
    """All text the caller sent (messages or prompt), for token estimates and the fake backend."""
    return request_text(call.request)


def prompt_extras(request: Any) -> str:
    """What a chat prompt holds besides its messages' text, which providers bill as input too: the tool
    definitions and the tool calls in the history (as JSON: counted when the backend reported no usage)."""
    if not isinstance(request, ChatCompletionRequest):
        return ""
    parts = [orjson.dumps(request.tools).decode()] if request.tools else []
    for message in request.messages:
        extra = message.model_extra or {}
        parts.extend(orjson.dumps(extra[key]).decode() for key in ("tool_calls", "function_call") if extra.get(key))
    return "\n".join(parts)


def request_text(request: Any) -> str:
    """The text of a chat, completion or embedding request (token-id inputs are left out: `token_id_count`)."""
    messages = getattr(request, "messages", None)
    if messages is not None:
        return "\n".join(m.text() for m in messages)
    prompt = getattr(request, "prompt", None)
    if prompt is None:
        prompt = getattr(request, "input", None) or ""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(p for p in prompt if isinstance(p, str))


def token_id_count(request: Any) -> int:
    """How many token ids a completion prompt or embedding input carries (they are tokens already)."""
    if isinstance(request, CompletionRequest):
        value: Any = request.prompt
    elif isinstance(request, EmbeddingRequest):
        value = request.input
    else:
        return 0
    if not isinstance(value, list):
        return 0
    return sum(len(item) if isinstance(item, list) else int(isinstance(item, int)) for item in value)


def echoed_prompts(request: Any) -> tuple[str, int]:
    """What an `echo` completion's answers repeat before what they generated, and how many times: its text
    prompts, once for each of their `n` answers (not generated, so not output; a prompt of token ids comes back
    as text margin cannot tell apart from the rest, and is left in). Never repeated here: `n` × 4 MiB."""
    if not isinstance(request, CompletionRequest) or not request.echo:
        return "", 0
    prompt = request.prompt
    texts = [prompt] if isinstance(prompt, str) else [p for p in prompt if isinstance(p, str)]
    return "".join(texts), request.n


def non_text_parts(request: Any) -> int:
    """Image, audio or file parts of a chat request, or of a compaction's items (priced by the upstream, not
    counted as text)."""
    return _parts(request, lambda kind: kind != "text", COMPACT_MEDIA)


def file_parts(request: Any) -> int:
    """File parts of a chat request, or of a compaction's items (a PDF: billed by the page, each page's text and
    image, up to the context)."""
    return _parts(request, lambda kind: kind == "file", {"input_file"})


def _parts(request: Any, chat: Callable[[str], bool], compact: AbstractSet[str]) -> int:
    if isinstance(request, CompactRequest):
        return _compact_parts(request, compact)
    if not isinstance(request, ChatCompletionRequest):
        return 0
    return sum(
        1
        for message in request.messages
        if isinstance(message.content, list)
        for part in message.content
        if chat(part.type)
    )


COMPACT_MEDIA = frozenset({"input_image", "input_file", "input_audio"})


def _compact_parts(request: CompactRequest, kinds: AbstractSet[str]) -> int:
    """The parts of these kinds in a compaction's items: an item's `content` or a tool output's `output` list
    (its items are open: what the Responses API takes there); bounded by the items' count and the body's size."""
    if not isinstance(request.input, list):
        return 0
    found = 0
    for item in request.input:
        for field in ("content", "output"):
            parts = (item.model_extra or {}).get(field)
            if isinstance(parts, list):
                found += sum(1 for part in parts if isinstance(part, dict) and part.get("type") in kinds)
    return found
