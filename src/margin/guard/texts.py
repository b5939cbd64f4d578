"""Where the text is in an OpenAI request or answer, so guards can read and rewrite it in place.

Requests are handled as the caller's JSON (`ctx.raw`), which is what upstreams receive, and re-parsed after a
rewrite; answers as the OpenAI payload (`choices[].message.content`, `choices[].text`, stream deltas)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

Rewrite = Callable[[str], str]
UNTRUSTED_ROLES = frozenset({"user", "tool", "function"})  # where injected instructions come from


def request_texts(raw: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(role, text) for every text the request sends: chat messages (all roles), prompts, embedding inputs."""
    for message in raw.get("messages") or []:
        if not isinstance(message, dict):
            continue
        role = str(message.get("role", ""))
        content = message.get("content")
        if isinstance(content, str):
            yield role, content
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    yield role, part["text"]
    for field in ("prompt", "input"):
        value = raw.get(field)
        if isinstance(value, str):
            yield "user", value
        elif isinstance(value, list):
            yield from (("user", item) for item in value if isinstance(item, str))


def _rewrite_value(value: Any, rewrite: Rewrite) -> Any:
    if isinstance(value, str):
        return rewrite(value)
    if isinstance(value, list):
        return [rewrite(item) if isinstance(item, str) else item for item in value]
    return value


def _rewrite_message(message: Any, rewrite: Rewrite) -> Any:
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": rewrite(content)}
    if isinstance(content, list):
        parts = [
            {**part, "text": rewrite(part["text"])}
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else part
            for part in content
        ]
        return {**message, "content": parts}
    return message


def rewrite_request(raw: dict[str, Any], rewrite: Rewrite) -> dict[str, Any]:
    """A copy of the request with every text passed through `rewrite` (structure and other fields kept)."""
    out = dict(raw)
    if isinstance(raw.get("messages"), list):
        out["messages"] = [_rewrite_message(message, rewrite) for message in raw["messages"]]
    for field in ("prompt", "input"):
        if field in raw:
            out[field] = _rewrite_value(raw[field], rewrite)
    return out


def rewrite_answer(payload: dict[str, Any], rewrite: Rewrite) -> bool:
    """Rewrite an answer's (or a stream chunk's) text in place; True when anything changed."""
    changed = False
    for choice in payload.get("choices") or []:
        for holder, key in ((choice.get("message"), "content"), (choice.get("delta"), "content"), (choice, "text")):
            if isinstance(holder, dict) and isinstance(holder.get(key), str):
                new = rewrite(holder[key])
                if new != holder[key]:
                    holder[key] = new
                    changed = True
    return changed


def answer_text(payload: dict[str, Any]) -> str:
    parts: list[str] = []
    for choice in payload.get("choices") or []:
        for holder, key in ((choice.get("message"), "content"), (choice.get("delta"), "content"), (choice, "text")):
            if isinstance(holder, dict) and isinstance(holder.get(key), str):
                parts.append(holder[key])
    return "".join(parts)
