"""What a chat message holds besides its content and is not OpenAI's: the reasoning text upstreams return in
one of two fields, and the thinking blocks (with their order among the text and tool calls) that only an
anthropic backend takes back."""

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


ANTHROPIC_ONLY = ("thinking_blocks", "block_order")  # `block_order`: margin.interleaving, sent back with the blocks


def without_thinking(messages: Any) -> Any:
    """A chat's messages as sent, less their `thinking_blocks` (an anthropic backend's, which no other backend
    takes) and `block_order` (their order among the text and tool calls): the same list when none holds any."""
    if type(messages) is not list or not any(type(m) is dict and _anthropic_only(m) for m in messages):
        return messages
    return [
        {k: v for k, v in m.items() if k not in ANTHROPIC_ONLY} if type(m) is dict and _anthropic_only(m) else m
        for m in messages
    ]


def _anthropic_only(message: dict[str, Any]) -> bool:
    return "thinking_blocks" in message or "block_order" in message
