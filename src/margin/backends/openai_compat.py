"""Any OpenAI-compatible upstream (vLLM, SGLang, llama.cpp server, Ollama, hosted APIs) over one shared
HTTP client session per backend. The client's JSON is passed on, limited to the fields margin knows and
prices (`protocol.FORWARDED`; `model` is replaced, and stream usage is asked for); answers are forwarded byte
for byte, and parsed only to read usage and content.

The client is aiohttp, not httpx: measured against the same local upstream, an httpx.AsyncClient cost
952 µs per sequential request and 1,448 µs at 50 in flight (its connection pool scans every connection on
each request), aiohttp 326 µs and 114 µs. That difference alone is over the gateway's overhead budget."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from margin import jsonload
from margin.backend_config import OpenAIBackendConfig
from margin.backends.deadline import StreamDeadline
from margin.backends.retry import RETRY_STATUSES, Backoff, retry_after_s
from margin.backends.upstream_errors import log_upstream, upstream_error, upstream_message
from margin.errors import (
    BackendError,
    BackendTimeout,
    MarginError,
    ResponseTooLarge,
    StreamTimeLimit,
)
from margin.logs import printable
from margin.protocol import FORWARDED, Endpoint
from margin.types import Call, Chunk, Completion, Usage, choices_text

log = logging.getLogger("margin.backends")

PATHS = {Endpoint.CHAT: "/chat/completions", Endpoint.COMPLETIONS: "/completions", Endpoint.EMBEDDINGS: "/embeddings"}


ERROR_BODY_BYTES = 64 * 1024


def limit_field_for(base_url: str) -> str:
    """The output-limit field an upstream takes when its config does not say: OpenAI's and Azure OpenAI's
    reasoning models refuse `max_tokens` (400), and their other models take `max_completion_tokens` too."""
    host = urlsplit(base_url).hostname or ""
    return "max_completion_tokens" if host == "api.openai.com" or host.endswith(".openai.azure.com") else "max_tokens"


def delta_text(payload: dict[str, Any]) -> str:
    return choices_text(payload, "delta")


def message_text(payload: dict[str, Any]) -> str:
    return choices_text(payload, "message")


class _Retry(Exception):
    """A try failed in a way that is safe to repeat (nothing was answered yet)."""

    def __init__(self, error: MarginError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


class StreamExpired(TimeoutError):
    """Raised into a stream's pending read when one of its time limits passed (`StreamDeadline`)."""


LIMITS = {"first_token": "sent no first event", "idle": "went silent mid-stream", "total": "ran past its total limit"}


class OpenAIBackend:
    """Timeouts (`OpenAIBackendConfig`): connect per try; JSON calls end at `timeout_s` (retries and waits
    included); streams must send their first event within `first_token_timeout_s`, then never stay silent for
    `idle_timeout_s`, and end within `timeout_s`. Retries (`backends.retry`) happen in `_send`, before any
    byte of the answer exists."""

    def __init__(self, name: str, config: OpenAIBackendConfig, services: Any = None) -> None:
        self.name = name
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._base = config.base_url.rstrip("/")
        self._limit_field = config.output_limit_field or limit_field_for(config.base_url)
        # the `service_tier` values it is sent: none unless it lists tiers (a server that knows them); the route
        # step refused a request for a tier it does not allow, this is the same rule once more
        self._tiers = frozenset(("auto", "default", *config.service_tiers)) if config.service_tiers else frozenset()
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout_s)
        self._backoff = Backoff(config.retries)
        self._errors = 0
        self._served = 0
        self._retries = 0

    async def start(self) -> None:
        headers = {"content-type": "application/json"}
        if self.config.api_key_env and (key := os.environ.get(self.config.api_key_env)):
            headers["authorization"] = f"Bearer {key}"
        connector = aiohttp.TCPConnector(limit=self.config.max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            headers=headers, connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def count_tokens(self, text: str) -> int | None:
        return None

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "kind": "openai",
            "served": self._served,
            "errors": self._errors,
            "retries": self._retries,
        }

    def _body(self, call: Call, *, stream: bool) -> bytes:
        known = FORWARDED[call.endpoint]  # a null is the field left out (OpenAI's meaning; some servers differ)
        body = {name: value for name, value in call.raw.items() if name in known and value is not None}
        body["model"] = call.upstream_model
        if "service_tier" in body and body["service_tier"] not in self._tiers:
            del body["service_tier"]
        if call.endpoint is Endpoint.CHAT and self._limit_field == "max_completion_tokens" and "max_tokens" in body:
            limits = [v for v in (body.pop("max_tokens"), body.get("max_completion_tokens")) if isinstance(v, int)]
            if limits:  # both mean the answer's limit (the lower one is what was priced and capped)
                body["max_completion_tokens"] = min(limits)
        if stream and self.config.request_usage:
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body["stream_options"] = options
        return orjson.dumps(body)

    async def _try(self, url: str, data: bytes) -> aiohttp.ClientResponse:
        """One POST; an error status or a refused connection comes back translated (as `_Retry` if repeatable)."""
        assert self._session is not None
        try:
            # never follow a redirect: it would send the caller's prompt wherever an upstream's `Location` says
            response = await self._session.post(url, data=data, timeout=self._timeout, allow_redirects=False)
        except aiohttp.ClientSSLError as exc:
            raise BackendError(f"upstream {self.name} unreachable: {exc.__class__.__name__}") from exc
        except aiohttp.ClientConnectorError as exc:  # the request never left: safe to repeat
            error = BackendError(
                f"upstream {self.name} unreachable: {exc.__class__.__name__}", code="upstream_unreachable"
            )
            raise _Retry(error) from exc
        if response.status < 300:
            return response
        self._errors += 1  # 3xx too: a redirect is not followed, it is the upstream's failure
        if response.status < 400:  # say where it pointed: an `http://` base_url moved to https reads as this
            where = printable(response.headers.get("location", ""), limit=200)
            log.warning(
                "upstream %s redirected to %r: not followed (set its base_url there if it is right)", self.name, where
            )
        body = await response.content.read(ERROR_BODY_BYTES)  # an error body is read bounded
        response.close()
        failed = upstream_error(self.name, response.status, body, response.headers)
        if response.status in RETRY_STATUSES:
            raise _Retry(failed)
        if response.status == 429 and (after := retry_after_s(response.headers.get("retry-after"))) is not None:
            raise _Retry(failed, after)
        raise failed

    async def _send(self, call: Call, *, stream: bool, deadline: float) -> aiohttp.ClientResponse:
        """`_send_until` within `deadline` (loop time)."""
        try:
            async with asyncio.timeout_at(deadline):
                return await self._send_until(call, stream=stream, deadline=deadline)
        except TimeoutError as exc:
            raise self._waited(stream) from exc

    def _waited(self, stream: bool) -> BackendTimeout:
        limit = "first event" if stream else "answer"
        return BackendTimeout(f"upstream {self.name} timed out waiting for its {limit}")

    async def _send_until(self, call: Call, *, stream: bool, deadline: float) -> aiohttp.ClientResponse:
        """POST to the upstream until it answers, retrying what is safe to repeat while `deadline` (loop time)
        allows; translate transport failures and error statuses at this boundary. The time limit itself is
        the caller's (one `asyncio.timeout_at` a request: entering and leaving one costs ~5 µs)."""
        if self._session is None:
            raise BackendError(f"backend {self.name!r} is not started")
        url, data, loop = self._base + PATHS[call.endpoint], self._body(call, stream=stream), asyncio.get_running_loop()
        try:
            while True:
                try:
                    return await self._try(url, data)
                except _Retry as retry:
                    wait = self._backoff.delay(
                        call.stats.attempts, remaining_s=deadline - loop.time(), retry_after=retry.retry_after
                    )
                    if wait is None:
                        raise retry.error from retry.__cause__
                    log.info("upstream %s: %s; retrying in %.3fs", self.name, retry.error.code, wait)
                    call.stats.attempts += 1
                    call.stats.retried = retry.error.code
                    self._retries += 1
                    await asyncio.sleep(wait)
        except aiohttp.ConnectionTimeoutError as exc:
            limit_s = self.config.connect_timeout_s
            raise BackendTimeout(f"upstream {self.name}: no connection within {limit_s:g}s") from exc
        except TimeoutError as exc:
            raise self._waited(stream) from exc
        except aiohttp.ClientError as exc:
            raise BackendError(f"upstream {self.name} unreachable: {exc.__class__.__name__}") from exc

    async def _post(self, call: Call) -> Completion:
        """The answer and its reading within one time limit, `timeout_s`."""
        deadline = asyncio.get_running_loop().time() + self.config.timeout_s
        response: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._send_until(call, stream=False, deadline=deadline)
                content = await self._read(response)
        except TimeoutError as exc:
            if response is None:
                raise self._waited(False) from exc
            raise BackendTimeout(f"upstream {self.name} timed out") from exc
        try:
            payload = jsonload.loads(content)
        except orjson.JSONDecodeError as exc:
            raise BackendError(f"upstream {self.name} sent invalid JSON", code="upstream_bad_response") from exc
        if not isinstance(payload, dict):
            raise BackendError(f"upstream {self.name} sent JSON that is not an object", code="upstream_bad_response")
        if _is_error(payload):  # an error under a 200: its text goes to the log, never to the caller
            log_upstream(self.name, "answered 200 with an error", upstream_message(content)[0])
            raise BackendError("the upstream failed (an error under HTTP 200)")
        self._served += 1
        usage = Usage.from_openai(payload.get("usage"))
        return Completion(payload=payload, raw=content, text=message_text(payload), usage=usage)

    def _too_large(self, response: aiohttp.ClientResponse, declared: int | None = None) -> ResponseTooLarge:
        """Drops the connection (the rest of the answer is never read) and says why."""
        response.close()
        limit = self.config.max_response_bytes
        what = f"declared an answer of {declared} bytes" if declared is not None else "sent an answer"
        return ResponseTooLarge(f"upstream {self.name} {what} over its limit of {limit} bytes (max_response_bytes)")

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The whole body, never more than `max_response_bytes` held. A plain body whose declared length fits
        is read at once; a larger declared one is refused unread; anything else (chunked, compressed: the
        limit counts decompressed bytes) is counted as it arrives."""
        limit, declared = self.config.max_response_bytes, response.content_length
        try:
            if declared is not None and declared > limit:
                raise self._too_large(response, declared)
            if declared is not None and "content-encoding" not in response.headers:
                return await response.read()  # aiohttp stops at the declared length
            parts: list[bytes] = []
            size = 0
            while data := await response.content.readany():
                size += len(data)
                if size > limit:
                    raise self._too_large(response)
                parts.append(data)
            return b"".join(parts)
        except TimeoutError as exc:
            raise BackendTimeout(f"upstream {self.name} timed out") from exc
        except aiohttp.ClientError as exc:
            raise BackendError(f"upstream {self.name} broke off: {exc.__class__.__name__}") from exc
        finally:
            response.release()

    async def complete(self, call: Call) -> Completion:
        return await self._post(call)

    async def embed(self, call: Call) -> Completion:
        return await self._post(call)

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        config, started = self.config, asyncio.get_running_loop().time()
        first_by = started + min(config.first_token_timeout_s, config.timeout_s)
        response = await self._send(call, stream=True, deadline=first_by)

        def expire(reason: str) -> None:
            response.content.set_exception(StreamExpired(reason))

        deadline = StreamDeadline(
            started,
            first_token_s=config.first_token_timeout_s,
            idle_s=config.idle_timeout_s,
            total_s=config.timeout_s,
            expire=expire,
        )
        finished = flowing = False
        try:
            async for batch in self._reads(response, deadline):
                for chunk in batch:
                    flowing = True
                    yield chunk
            finished = True
            self._served += 1
        except StreamExpired as exc:
            message = f"upstream {self.name} {LIMITS[str(exc)]}"
            if str(exc) == "total" and flowing:  # a long answer (or a slow reader), not a sick backend
                raise StreamTimeLimit(message) from exc
            raise BackendTimeout(message) from exc
        except TimeoutError as exc:
            raise BackendTimeout(f"upstream {self.name} timed out mid-stream") from exc
        except aiohttp.ClientError as exc:
            raise BackendError(f"upstream {self.name} broke the stream: {exc.__class__.__name__}") from exc
        finally:
            deadline.cancel()
            if finished:
                response.release()
            else:
                response.close()  # stop the upstream's generation: drop the connection

    async def _reads(
        self, response: aiohttp.ClientResponse, deadline: StreamDeadline | None = None
    ) -> AsyncIterator[list[Chunk]]:
        """SSE events as they arrive: every read takes all the bytes already received, so the events of one
        read are handed over together (one generator step per read, not per event), marked `more` (all but
        the last chunk), which lets the responder write them to the client at once (`_batch`). Nothing waits
        for more data than the first event needs. `deadline` hears when a read starts and ends (only those
        waits count towards the stream's idle limit). An event that does not parse fails after the good ones
        before it."""
        content, lines, first, done = response.content, Lines(self.config.max_response_bytes), True, False
        while True:
            if deadline is not None:
                deadline.waiting()
            data = await content.readany()
            if not data:
                break
            complete = lines.feed(data)
            if complete is None:
                raise self._too_large(response)
            events = [event for line in complete if line and (event := _event_data(line)) is not None]
            if deadline is not None:
                deadline.received(event=bool(events))
            batch: list[Chunk] = []
            try:
                done = self._batch(events, batch, first=first)
            except BackendError:
                if batch:  # the good events before the bad one are delivered first
                    yield batch
                raise
            first = first and not batch
            if batch:
                yield batch
            if done:
                break
        event = _event_data(lines.rest()) if not done else None
        if event is not None and event != b"[DONE]":
            yield [self._chunk(event)]
        elif first:  # not one event (an empty body, `[DONE]` alone, a JSON error body): no answer, not an empty one
            log_upstream(self.name, "sent a stream without events", upstream_message(lines.rest())[0])
            raise BackendError(f"upstream {self.name} sent a stream without events", code="upstream_bad_response")

    def _batch(self, events: list[bytes], batch: list[Chunk], *, first: bool) -> bool:
        """One read's events into `batch`, in order; True at `[DONE]`. A run of events whose bytes name neither
        usage nor an error is one chunk (`Chunk.events`: forwarded as they came, no Python per event beyond
        this check); an event that names either is parsed into its own chunk, and the stream's first is a
        chunk of its own too (the call step parses it before anything is sent). Each chunk but the last is
        marked `more`. An event not shaped like a JSON object raises, once the good ones before it are in
        `batch`."""
        run: list[bytes] = []
        try:
            for event in events:
                if event == b"[DONE]":
                    return True
                if first or _names_usage_or_error(event):
                    if run:
                        batch.append(Chunk(events=run) if len(run) > 1 else Chunk(raw=run[0]))
                        run = []
                    batch.append(self._chunk(event))
                    first = False
                elif event.startswith(b"{") and event.endswith(b"}"):
                    run.append(event)
                else:
                    raise self._invalid_event()
            return False
        finally:
            if run:
                batch.append(Chunk(events=run) if len(run) > 1 else Chunk(raw=run[0]))
            for chunk in batch[:-1]:
                chunk.more = True

    def _invalid_event(self) -> BackendError:
        return BackendError(f"upstream {self.name} sent an invalid stream event", code="upstream_bad_response")

    def _chunk(self, data: bytes) -> Chunk:
        """One event, parsed here only when its bytes name usage or an error (the rest is parsed on first use:
        the text of the first token, or when a guard or the cache reads it). An event that is not even shaped
        like a JSON object (cut, garbled) fails here, before it is forwarded; one that is shaped like one but
        does not parse fails where it is first parsed."""
        if not _names_usage_or_error(data):
            if not (data.startswith(b"{") and data.endswith(b"}")):
                raise self._invalid_event()
            return Chunk(raw=data)
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise self._invalid_event() from exc
        if not isinstance(payload, dict):
            raise self._invalid_event()
        if _is_error(payload):
            log_upstream(self.name, "failed mid-stream", upstream_message(data)[0])
            raise BackendError("the upstream failed mid-stream")
        usage = Usage.from_openai(payload.get("usage")) if payload.get("usage") else None
        return Chunk(payload=payload, raw=data, text=delta_text(payload), usage=usage)


class Lines:
    """A stream's bytes as whole lines, within the answer's size limit. A line still arriving is kept in parts
    and joined once, when its end comes (never a copy of everything so far per read)."""

    __slots__ = ("limit", "partial", "size")

    def __init__(self, limit: int) -> None:
        self.limit, self.size = limit, 0
        self.partial: list[bytes] = []

    def feed(self, data: bytes) -> list[bytes] | None:
        """The lines `data` completes (often none); None once the stream has passed the limit."""
        self.size += len(data)
        if self.size > self.limit:
            return None
        if b"\n" not in data:
            self.partial.append(data)
            return []
        if self.partial:
            self.partial.append(data)
            data = b"".join(self.partial)
            self.partial.clear()
        *lines, pending = data.split(b"\n")
        if pending:
            self.partial.append(pending)
        return lines

    def rest(self) -> bytes:
        """What followed the last line end (a last event without one)."""
        return b"".join(self.partial)


def _is_error(payload: dict[str, Any]) -> bool:
    """An answer (or event) that is an OpenAI error object rather than an answer."""
    return payload.get("error") is not None and "choices" not in payload and "data" not in payload


def _names_usage_or_error(event: bytes) -> bool:
    """Whether an event's bytes name an error, or usage that is not null (OpenAI puts `"usage":null` in every
    chunk once usage is asked for; only the last one holds it)."""
    if b'"error"' in event:
        return True
    return b'"usage"' in event and b'"usage":null' not in event and b'"usage": null' not in event


def _event_data(line: bytes) -> bytes | None:
    """The data of an SSE `data:` line; None for anything else (comments, other fields, blank lines)."""
    line = line.strip()
    return line[5:].strip() if line.startswith(b"data:") else None
