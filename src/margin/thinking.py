"""What a chat message holds besides its content and is not OpenAI's: the reasoning text upstreams return in
one of two fields, OpenRouter's structured `reasoning_details`, the thinking blocks (with their order among
the text and tool calls) that only an anthropic backend takes back, and tool call arguments sent as a JSON object
rather than its text."""

from __future__ import annotations

import re
from typing import Any, TypeGuard

import orjson

REASONING_KEYS = ("reasoning_content", "reasoning")
"""Where a chat message or delta holds its reasoning text: `reasoning_content` (vLLM, DeepSeek, an `anthropic`
backend's answer) or `reasoning` (OpenRouter, Ollama; recent vLLM sends both, holding the same text)."""


def reasoning_of(holder: dict[str, Any]) -> str | None:
    """A chat message's or delta's reasoning text, read once: its `reasoning_content`, else its `reasoning`
    (None: neither is a text that is not empty)."""
    for key in REASONING_KEYS:
        if isinstance(text := holder.get(key), str) and text:
            return text
    return None


REASONING_DETAILS = "reasoning_details"
"""OpenRouter's structured reasoning on a chat message or delta (a client sends it back on the assistant message
of a tool loop): a list of entries, `reasoning.text` (its `text`, often with a `signature`), `reasoning.summary`
(its `summary`), `reasoning.encrypted` (opaque `data`). A stream's deltas hold pieces of the entries."""
DETAIL_TEXT_KEYS = {"reasoning.text": "text", "reasoning.summary": "summary"}
"""The text of an entry of each readable type; a `reasoning.encrypted` entry's `data` is opaque, never read."""


def detail_texts(holder: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(entry, the key of its text) for each `reasoning_details` entry of a message or delta that holds text."""
    entries = holder.get(REASONING_DETAILS)
    if type(entries) is not list:
        return []
    found = []
    for entry in entries:
        kind = entry.get("type") if type(entry) is dict else None
        key = DETAIL_TEXT_KEYS.get(kind) if type(kind) is str else None
        if key is not None and isinstance(entry.get(key), str):
            found.append((entry, key))
    return found


def repeats_reasoning(holder: dict[str, Any], texts: list[str]) -> bool:
    """Whether `texts` joined are the holder's reasoning, in either key (its values counted there already)."""
    joined = "".join(texts)
    return any(holder.get(key) == joined for key in REASONING_KEYS)


ANTHROPIC_USAGE_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
MAX_COUNT = 2**31 - 1


def start_usage(counts: Any) -> dict[str, int] | None:
    """The usage an `anthropic` backend's upstream reported at its `message_start` (Anthropic's counts: the input
    less its cache reads and writes, each apart), as `margin.types.Chunk.start_usage` carries it beside the stream's
    first chunk (never in its JSON) for the Messages translation's own `message_start` (`margin.api.messages_out`):
    each a whole number, 0 where it is not one; None where `counts` is not a dict that counts the input. The chat's
    usage comes at the stream's end, as OpenAI's."""
    if type(counts) is not dict or not _count(counts.get("input_tokens")):
        return None
    return {key: _whole(counts.get(key)) for key in ANTHROPIC_USAGE_KEYS}


def _whole(value: Any) -> int:
    return value if _count(value) else 0


def _count(value: Any) -> TypeGuard[int]:
    return type(value) is int and 0 <= value <= MAX_COUNT


ANTHROPIC_ONLY = ("thinking_blocks", "block_order")  # `block_order`: margin.interleaving, sent back with the blocks
IS_ERROR = "is_error"
"""A tool message's flag that its result is an error (a Messages `tool_result`'s `is_error`, whose text also opens
with `ERROR_PREFIX`): an anthropic backend's `tool_result` takes it, with the text as it came; no OpenAI-compatible
upstream does."""
ERROR_PREFIX = "Error: "
ERROR_PREFIXED = "error_prefixed"
"""A tool message's mark that margin opened its text with `ERROR_PREFIX` (a Messages `tool_result` translated, with
`IS_ERROR`): an anthropic backend takes the prefix off again. A chat client's own `is_error` message has none: its
text is sent as it came, a leading `Error: ` included. No upstream is sent the mark."""


RESULT_MEDIA = "result_media"
"""A tool message's count of the images and documents of its result (a Messages `tool_result`'s) that open the user
message after it: a chat's tool message holds text only, so that is where an OpenAI-compatible upstream gets them.
An anthropic backend puts them back inside the `tool_result` (`margin.backends.anthropic_request`); no upstream is
sent the count."""
DOCUMENT = "document"
"""A content part's mark that it was a Messages `document` block (a PDF's `file` part, or a plain text document's
text), with the block's `title` and `context` where it had them: an anthropic backend sends a document block again;
no upstream is sent the mark."""
MARKS = (IS_ERROR, ERROR_PREFIXED, RESULT_MEDIA)


def without_thinking(messages: Any, keep_thinking: bool = False) -> Any:
    """A chat's messages as sent, less their `thinking_blocks` (an anthropic backend's, which no other backend
    takes) and `block_order` (their order among the text and tool calls), unless `keep_thinking`, and less the
    marks only an anthropic backend reads: a tool message's `is_error` (`IS_ERROR`), `ERROR_PREFIXED` and
    `RESULT_MEDIA`, a content part's `DOCUMENT`. The same list when none holds any."""
    drop = MARKS if keep_thinking else (*ANTHROPIC_ONLY, *MARKS)
    if type(messages) is not list or not any(type(m) is dict and _holds(m, drop) for m in messages):
        return messages
    return [_without(m, drop) if type(m) is dict and _holds(m, drop) else m for m in messages]


def _holds(message: dict[str, Any], keys: tuple[str, ...]) -> bool:
    return any(key in message for key in keys) or _documents(message)


def _documents(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return type(content) is list and any(type(part) is dict and DOCUMENT in part for part in content)


def _without(message: dict[str, Any], drop: tuple[str, ...]) -> dict[str, Any]:
    out = {k: v for k, v in message.items() if k not in drop}
    if _documents(message):
        out["content"] = [
            {k: v for k, v in part.items() if k != DOCUMENT} if type(part) is dict else part
            for part in message["content"]
        ]
    return out


OBJECT_ARGUMENTS = re.compile(rb'"arguments"\s*:\s*[\[{]')
"""An answer's or stream event's bytes whose tool call `arguments` are a JSON object or array, not its text (Ollama's
way, and some OpenAI-compatible servers'): `text_arguments` writes them as the text OpenAI documents."""


def object_arguments(data: bytes) -> bool:
    """Whether an answer's or stream event's bytes may hold tool call arguments that are not text."""
    return b'"arguments"' in data and OBJECT_ARGUMENTS.search(data) is not None


def arguments_text(arguments: Any) -> str:
    """A tool call's arguments as the JSON text the Chat, Responses and Messages APIs document: a string as it
    came, a JSON value written as its JSON, none as ""."""
    if arguments is None or isinstance(arguments, str):
        return arguments or ""
    try:
        return orjson.dumps(arguments).decode()
    except orjson.JSONEncodeError:  # it parsed (orjson reads 1,024 levels) but nests past what orjson writes (255)
        return ""


def text_arguments(payload: Any) -> bool:
    """Each tool call of an answer's or stream event's choices (`message`, `delta`) whose `arguments` are a JSON
    value but not text, rewritten in place as its text (`arguments_text`); whether any was."""
    choices = payload.get("choices") if type(payload) is dict else None
    changed = False
    for choice in choices if type(choices) is list else ():
        for key in ("message", "delta"):
            holder = choice.get(key) if type(choice) is dict else None
            calls = holder.get("tool_calls") if type(holder) is dict else None
            for call in calls if type(calls) is list else ():
                function = call.get("function") if type(call) is dict else None
                if type(function) is dict and not isinstance(value := function.get("arguments"), str | None):
                    function["arguments"], changed = arguments_text(value), True
    return changed
