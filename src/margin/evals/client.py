"""The eval kit's only way to a model: an OpenAI-compatible HTTP endpoint, like any client.

Every call streams (`stream_options.include_usage`), so TTFT is measured client-side as in `margin bench`.
Through margin, the response headers carry `x-margin-request-id` (the ledger row's key) and a stream ends
with the SSE comment `: x-margin-cost-usd=… x-margin-overhead-ms=…`; the cost comes from there. Against any
other endpoint the cost is unknown unless the variant gives a price (then tokens × price, labelled so).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import orjson

COST_COMMENT = "x-margin-cost-usd="
MAX_ANSWER_CHARS = 200_000


@dataclass(frozen=True, slots=True)
class Endpoint:
    base_url: str  # …/v1
    api_key: str | None = None
    timeout_s: float = 600.0
    extra_headers: tuple[tuple[str, str], ...] = ()  # e.g. (("x-margin-cache", "off"),)

    def headers(self, tags: dict[str, str]) -> dict[str, str]:
        headers = {"content-type": "application/json", **dict(self.extra_headers)}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        if tags:
            headers["x-margin-tags"] = ",".join(f"{k}={v}" for k, v in tags.items())
        return headers


@dataclass(slots=True)
class ChatResult:
    text: str = ""
    status: int | None = None
    error: str | None = None
    request_id: str | None = None
    cost_usd: Decimal | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    ttft_s: float | None = None
    e2e_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "error": self.error,
            "request_id": self.request_id,
            "cost_usd": None if self.cost_usd is None else str(self.cost_usd),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "finish_reason": self.finish_reason,
            "ttft_s": self.ttft_s,
            "e2e_s": self.e2e_s,
        }


def _usd(text: str | None) -> Decimal | None:
    """A cost the gateway wrote (`0.000001830`); None for none or `unknown` (a model at an unknown price)."""
    try:
        return Decimal(text) if text else None
    except InvalidOperation:
        return None


def _cost_from_comment(line: str) -> Decimal | None:
    for part in line.lstrip(":").split():
        if part.startswith(COST_COMMENT):
            return _usd(part.removeprefix(COST_COMMENT))
    return None


def _apply(result: ChatResult, data: dict[str, Any], parts: list[str], started: float) -> None:
    if data.get("error"):
        result.error = str(data["error"])[:300]
    for choice in data.get("choices") or []:
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        if text:
            if result.ttft_s is None:
                result.ttft_s = time.perf_counter() - started
            parts.append(text)
        if choice.get("finish_reason"):
            result.finish_reason = choice["finish_reason"]
    usage = data.get("usage")
    if isinstance(usage, dict):
        result.input_tokens = usage.get("prompt_tokens")
        result.output_tokens = usage.get("completion_tokens")


async def chat(
    http: httpx.AsyncClient,
    endpoint: Endpoint,
    model: str,
    messages: list[dict[str, str]],
    params: dict[str, Any],
    tags: dict[str, str] | None = None,
) -> ChatResult:
    """One streamed chat completion; transport errors come back in `error`, never raised."""
    body = {**params, "model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
    result, parts = ChatResult(), list[str]()
    started = time.perf_counter()
    url = f"{endpoint.base_url.rstrip('/')}/chat/completions"
    try:
        async with http.stream(
            "POST", url, content=orjson.dumps(body), headers=endpoint.headers(tags or {}), timeout=endpoint.timeout_s
        ) as response:
            result.status = response.status_code
            result.request_id = response.headers.get("x-margin-request-id")
            result.cost_usd = _usd(response.headers.get("x-margin-cost-usd"))  # `unknown` raised InvalidOperation
            if response.status_code != 200:
                result.error = (await response.aread()).decode(errors="replace")[:300]
            else:
                await _read_stream(response, result, parts, started)
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:300]
    result.e2e_s = time.perf_counter() - started
    result.text = "".join(parts)[:MAX_ANSWER_CHARS]
    return result


async def _read_stream(response: httpx.Response, result: ChatResult, parts: list[str], started: float) -> None:
    async for line in response.aiter_lines():
        if line.startswith(":"):
            cost = _cost_from_comment(line)
            if cost is not None:
                result.cost_usd = cost
            continue
        if not line.startswith("data:"):
            continue
        payload = line.removeprefix("data:").strip()
        if payload == "[DONE]":
            break
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if isinstance(data, dict):
            _apply(result, data, parts, started)
