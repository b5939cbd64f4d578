"""What a chat message holds besides its content and is not OpenAI's: the reasoning text upstreams return in
one of two fields, OpenRouter's structured `reasoning_details`, and the thinking blocks (with their order among
the text and tool calls) that only an anthropic backend takes back."""

from __future__ import annotations

from typing import Any

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


def without_thinking(messages: Any, keep_thinking: bool = False) -> Any:
    """A chat's messages as sent, less their `thinking_blocks` (an anthropic backend's, which no other backend
    takes) and `block_order` (their order among the text and tool calls), unless `keep_thinking`, and less a tool
    message's `is_error` (`IS_ERROR`) and its `ERROR_PREFIXED` mark: the same list when none holds any."""
    drop = (IS_ERROR, ERROR_PREFIXED) if keep_thinking else (*ANTHROPIC_ONLY, IS_ERROR, ERROR_PREFIXED)
    if type(messages) is not list or not any(type(m) is dict and _holds(m, drop) for m in messages):
        return messages
    return [
        {k: v for k, v in m.items() if k not in drop} if type(m) is dict and _holds(m, drop) else m for m in messages
    ]


def _holds(message: dict[str, Any], keys: tuple[str, ...]) -> bool:
    return any(key in message for key in keys)
