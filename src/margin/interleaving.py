"""The order of an answer's thinking, text and tool calls where a chat message cannot show it: Anthropic's
interleaved thinking (thinking, a tool call, thinking again, then text) is one chat message whose `thinking_blocks`,
`content` and `tool_calls` are apart. An `anthropic` backend's answer whose blocks are interleaved (a thinking block
after a text or tool_use block) carries `block_order` in its chat message: one entry per block, in the upstream's
order, `{"type": "thinking"}` (the next of `thinking_blocks`, a redacted one too), `{"type": "tool_use"}` (the next
of `tool_calls`) or `{"type": "text", "chars": n}` (the next n characters of `content`). The Messages and Responses
translations (`margin.api.messages_out`, `margin.api.responses_out`) lay the answer out in that order; without it
(every other answer, and every stream, whose chunks come in the upstream's order), thinking first, then text, then
tool calls, as before. The entries are checked against what the message holds: a `block_order` that does not
account for every block and call is not used, and content whose length no longer matches (the guard redacted it) is
laid out whole where its first text block was."""

from __future__ import annotations

from typing import Any

KEY = "block_order"
THINKING, TEXT, TOOL_USE = "thinking", "text", "tool_use"


def block_order(kinds: list[tuple[str, int]]) -> list[dict[str, Any]] | None:
    """The `block_order` of an answer's blocks (each its kind and, for text, its length), or None when its thinking
    all comes first (the order a chat message's fields already give)."""
    seen_other = False
    for kind, _chars in kinds:
        if kind != THINKING:
            seen_other = True
        elif seen_other:
            return [{"type": kind, "chars": chars} if kind == TEXT else {"type": kind} for kind, chars in kinds]
    return None


def in_order(message: dict[str, Any]) -> list[tuple[str, Any]] | None:
    """A chat message's parts in its `block_order`: `("thinking", i)` (the i-th of `thinking_blocks`), `("tool_use",
    i)` (the i-th of `tool_calls`), `("text", str)`; None without a `block_order` that accounts for them all."""
    order, blocks, calls = message.get(KEY), message.get("thinking_blocks"), message.get("tool_calls")
    if type(order) is not list or not order or type(blocks) is not list:
        return None
    calls = calls if type(calls) is list else []
    entries = _entries(order)
    content = message.get("content")
    content = content if type(content) is str else ""
    kinds = [kind for kind, _chars in entries or ()]
    if entries is None or kinds.count(THINKING) != len(blocks) or kinds.count(TOOL_USE) != len(calls):
        return None
    if content and TEXT not in kinds:
        return None
    split = sum(chars for _kind, chars in entries) == len(content)  # else rewritten (the guard): whole, at the first
    parts: list[tuple[str, Any]] = []
    counts = {THINKING: 0, TOOL_USE: 0}
    at, placed = 0, False
    for kind, chars in entries:
        if kind != TEXT:
            parts.append((kind, counts[kind]))
            counts[kind] += 1
        elif split or not placed:
            piece = content[at : at + chars] if split else content
            at, placed = at + chars, True
            if piece:
                parts.append((TEXT, piece))
    return parts


def _entries(order: list[Any]) -> list[tuple[str, int]] | None:
    """Each entry's kind and, for text, its length; None if one is not an entry."""
    entries: list[tuple[str, int]] = []
    for entry in order:
        kind = entry.get("type") if type(entry) is dict else None
        chars = entry.get("chars") if kind == TEXT else 0
        if kind not in (THINKING, TEXT, TOOL_USE) or type(chars) is not int or chars < 0:
            return None
        entries.append((kind, chars))
    return entries
