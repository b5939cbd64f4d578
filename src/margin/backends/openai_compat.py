"""Any OpenAI-compatible upstream (vLLM, SGLang, llama.cpp server, Ollama, hosted APIs) over one shared
`httpx.AsyncClient`. The client's JSON is passed on (only `model` is replaced, and stream usage is asked
for); answers are forwarded byte for byte, and parsed only to read usage and content."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from margin.backends.base import Call, Chunk, Completion, Usage
from margin.config import OpenAIBackendConfig
from margin.errors import BackendClientError, BackendError, BackendTimeout, MarginError, RateLimited
from margin.protocol import Endpoint

PATHS = {Endpoint.CHAT: "/chat/completions", Endpoint.COMPLETIONS: "/completions", Endpoint.EMBEDDINGS: "/embeddings"}


def _upstream_message(body: bytes) -> tuple[str, str | None]:
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return body[:300].decode(errors="replace"), None
    if isinstance(error, dict):
        return str(error.get("message") or error), error.get("code")
    return str(error), None


def upstream_error(backend: str, status: int, body: bytes, headers: httpx.Headers) -> MarginError:
    """Translate an upstream error status at the boundary: 4xx pass through, 5xx become 502."""
    message, code = _upstream_message(body)
    if status == 429:
        retry = headers.get("retry-after")
        return RateLimited(
            f"upstream {backend}: {message}",
            code=code or "upstream_rate_limited",
            headers={"retry-after": retry} if retry else None,
        )
    if 400 <= status < 500:
        return BackendClientError(f"upstream {backend}: {message}", status=status, code=code)
    return BackendError(f"upstream {backend} answered {status}: {message}")


def delta_text(payload: dict[str, Any]) -> str:
    parts = []
    for choice in payload.get("choices") or ():
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(text, str):
            parts.append(text)
    return "".join(parts)


def message_text(payload: dict[str, Any]) -> str:
    parts = []
    for choice in payload.get("choices") or ():
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else choice.get("text")
        if isinstance(text, str):
            parts.append(text)
    return "".join(parts)


class OpenAIBackend:
    def __init__(self, name: str, config: OpenAIBackendConfig, services: Any = None) -> None:
        self.name = name
        self.config = config
        self._client: httpx.AsyncClient | None = None
        self._errors = 0
        self._served = 0

    async def start(self) -> None:
        headers = {"content-type": "application/json"}
        if self.config.api_key_env:
            key = os.environ.get(self.config.api_key_env)
            if key:
                headers["authorization"] = f"Bearer {key}"
        limits = httpx.Limits(
            max_connections=self.config.max_connections, max_keepalive_connections=self.config.max_connections
        )
        timeout = httpx.Timeout(self.config.timeout_s, connect=self.config.connect_timeout_s)
        self._client = httpx.AsyncClient(
            base_url=self.config.base_url.rstrip("/"), headers=headers, limits=limits, timeout=timeout
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def count_tokens(self, text: str) -> int | None:
        return None

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "kind": "openai", "served": self._served, "errors": self._errors}

    def _body(self, call: Call, *, stream: bool) -> bytes:
        body = dict(call.raw)
        body["model"] = call.upstream_model
        if stream and self.config.request_usage:
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body["stream_options"] = options
        return orjson.dumps(body)

    def _client_or_fail(self) -> httpx.AsyncClient:
        if self._client is None:
            raise BackendError(f"backend {self.name!r} is not started")
        return self._client

    async def _post(self, call: Call) -> Completion:
        try:
            response = await self._client_or_fail().post(PATHS[call.endpoint], content=self._body(call, stream=False))
        except httpx.TimeoutException as exc:
            raise BackendTimeout(f"upstream {self.name} timed out") from exc
        except httpx.HTTPError as exc:
            raise BackendError(f"upstream {self.name} unreachable: {exc.__class__.__name__}") from exc
        if response.status_code >= 400:
            self._errors += 1
            raise upstream_error(self.name, response.status_code, response.content, response.headers)
        try:
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise BackendError(f"upstream {self.name} sent invalid JSON") from exc
        self._served += 1
        call.stats.usage = Usage.from_openai(payload.get("usage"))
        return Completion(payload=payload, raw=response.content, text=message_text(payload))

    async def complete(self, call: Call) -> Completion:
        return await self._post(call)

    async def embed(self, call: Call) -> Completion:
        return await self._post(call)

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        client = self._client_or_fail()
        request = client.build_request("POST", PATHS[call.endpoint], content=self._body(call, stream=True))
        try:
            response = await client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise BackendTimeout(f"upstream {self.name} timed out") from exc
        except httpx.HTTPError as exc:
            raise BackendError(f"upstream {self.name} unreachable: {exc.__class__.__name__}") from exc
        try:
            if response.status_code >= 400:
                self._errors += 1
                raise upstream_error(self.name, response.status_code, await response.aread(), response.headers)
            async for chunk in self._events(response):
                yield chunk
            self._served += 1
        except httpx.TimeoutException as exc:
            raise BackendTimeout(f"upstream {self.name} timed out mid-stream") from exc
        except httpx.HTTPError as exc:
            raise BackendError(f"upstream {self.name} broke the stream: {exc.__class__.__name__}") from exc
        finally:
            await response.aclose()

    async def _events(self, response: httpx.Response) -> AsyncIterator[Chunk]:
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                payload = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise BackendError(f"upstream {self.name} sent an invalid stream event") from exc
            if "error" in payload and "choices" not in payload:
                message, _code = _upstream_message(data.encode())
                raise BackendError(f"upstream {self.name} failed mid-stream: {message}")
            usage = Usage.from_openai(payload.get("usage")) if payload.get("usage") else None
            yield Chunk(payload=payload, raw=data.encode(), text=delta_text(payload), usage=usage)
