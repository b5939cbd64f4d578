"""The backend protocol and the values that cross it. Translation lives in each backend; I/O stays there."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from margin.protocol import ApiRequest, Endpoint


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    source: str = "backend"  # backend | tokenizer | estimated

    def to_openai(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }
        if self.cached_tokens:
            body["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return body

    @classmethod
    def from_openai(cls, data: Any) -> Usage | None:
        if not isinstance(data, dict):
            return None
        details = data.get("prompt_tokens_details") or {}
        return cls(
            input_tokens=_count(data.get("prompt_tokens")),
            output_tokens=_count(data.get("completion_tokens")),
            cached_tokens=_count(details.get("cached_tokens")) if isinstance(details, dict) else 0,
        )


def _count(value: Any) -> int:
    """A token count an upstream reported, as a ledger column holds it (0..2^31-1; junk counts 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return min(max(int(value), 0), 2**31 - 1) if math.isfinite(value) else 0


@dataclass(slots=True)
class CallStats:
    """What a backend reports about one call besides the payload."""

    usage: Usage | None = None
    busy_s: float | None = None  # exclusive compute time, when the backend knows it (embedded engines)
    queue_s: float = 0.0
    finish_reason: str | None = None
    attempts: int = 1  # tries of this call on this backend (retries after a refused connection, 5xx, 429)
    retried: str | None = None  # the error code of the last failure that was retried


@dataclass(slots=True)
class Call:
    endpoint: Endpoint
    request: ApiRequest
    raw: dict[str, Any]  # the client's JSON, passed on by proxying backends
    public_model: str
    upstream_model: str
    request_id: str
    stats: CallStats = field(default_factory=CallStats)

    @property
    def response_id(self) -> str:
        prefix = {Endpoint.CHAT: "chatcmpl", Endpoint.COMPLETIONS: "cmpl"}.get(self.endpoint, "emb")
        return f"{prefix}-{self.request_id}"


@dataclass(slots=True)
class Completion:
    """A whole (non-streamed) answer: the OpenAI payload and, when known, its raw bytes."""

    payload: dict[str, Any]
    raw: bytes | None = None
    text: str = ""


@dataclass(slots=True)
class Chunk:
    """One streamed event. `raw` is forwarded untouched when set; `text` is the new content. `more` says the
    backend already holds the next event (it arrived in the same read), so the responder may write both at
    once without waiting for anything."""

    payload: dict[str, Any]
    raw: bytes | None = None
    text: str = ""
    usage: Usage | None = None
    more: bool = False

    @property
    def is_usage_only(self) -> bool:
        return self.usage is not None and not self.payload.get("choices")


class Backend(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def complete(self, call: Call) -> Completion:
        """Chat or text completion, whole."""
        ...

    def stream(self, call: Call) -> AsyncIterator[Chunk]:
        """Chat or text completion as chunks; closing the iterator stops the generation."""
        ...

    async def embed(self, call: Call) -> Completion: ...

    def count_tokens(self, text: str) -> int | None:
        """Tokens of `text` with the model's tokenizer, or None when the backend has none."""
        ...

    def health(self) -> dict[str, Any]: ...
