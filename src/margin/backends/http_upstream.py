"""What every backend that calls a hosted HTTP upstream shares, whatever its wire format (`openai`,
`anthropic`): one aiohttp session per backend, the POST with retries before any byte of the answer exists
(`backends.retry`), error statuses translated at the boundary (`upstream_errors`), bodies read within
`max_response_bytes`, and a stream's time limits (`backends.deadline`). A subclass says where and what to send
(`_request`), how an answer reads (`_completion`) and how a stream's events become chunks (`_events`).

The client is aiohttp, not httpx: measured against the same local upstream, an httpx.AsyncClient cost
952 µs per sequential request and 1,448 µs at 50 in flight (its connection pool scans every connection on
each request), aiohttp 326 µs and 114 µs. That difference alone is over the gateway's overhead budget."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from margin import jsonload
from margin.backend_config import HttpBackendConfig
from margin.backends.deadline import StreamDeadline
from margin.backends.retry import RETRY_STATUSES, Backoff, retry_after_s
from margin.backends.upstream_errors import upstream_error
from margin.errors import BackendError, BackendTimeout, MarginError, ResponseTooLarge, StreamTimeLimit
from margin.logs import printable
from margin.types import Call, CallStats, Chunk, Completion

log = logging.getLogger("margin.backends")

ERROR_BODY_BYTES = 64 * 1024
MAX_TOKEN_COUNT = 2**31 - 1  # an upstream's token count past this is no count of a prompt margin sent


class _Retry(Exception):
    """A try failed in a way that is safe to repeat (nothing was answered yet)."""

    def __init__(self, error: MarginError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


class StreamExpired(TimeoutError):
    """Raised into a stream's pending read when one of its time limits passed (`StreamDeadline`)."""


LIMITS = {"first_token": "sent no first event", "idle": "went silent mid-stream", "total": "ran past its total limit"}


class HttpBackend:
    """Timeouts (`HttpBackendConfig`): connect per try; JSON calls end at `timeout_s` (retries and waits
    included); streams must send their first event within `first_token_timeout_s`, then never stay silent for
    `idle_timeout_s`, and end within `timeout_s`. Retries (`backends.retry`) happen in `_send`, before any
    byte of the answer exists."""

    kind = "http"
    retry_statuses: frozenset[int] = RETRY_STATUSES  # besides a 429 whose Retry-After is short

    def __init__(self, name: str, config: HttpBackendConfig) -> None:
        self.name = name
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._base = config.base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout_s)
        self._backoff = Backoff(config.retries)
        self._errors = 0
        self._served = 0
        self._retries = 0

    def _headers(self) -> dict[str, str]:
        """Headers of every request (credentials included: read from the environment at start)."""
        return {"content-type": "application/json"}

    def _request(self, call: Call, *, stream: bool) -> tuple[str, bytes]:
        """The URL and the body one call is sent."""
        raise NotImplementedError

    def _completion(self, call: Call, payload: dict[str, Any], content: bytes) -> Completion:
        """A whole answer's JSON object (read within the limits) as margin's `Completion`."""
        raise NotImplementedError

    def _events(
        self, call: Call, response: aiohttp.ClientResponse, deadline: StreamDeadline
    ) -> AsyncIterator[list[Chunk]]:
        """A stream's chunks, a read's worth at a time; `deadline` hears when each read starts and ends."""
        raise NotImplementedError

    def _error(self, status: int, body: bytes, headers: Mapping[str, str]) -> MarginError:
        return upstream_error(self.name, status, body, headers)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.config.max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            headers=self._headers(), connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def count_tokens(self, text: str) -> int | None:
        return None

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "kind": self.kind,
            "served": self._served,
            "errors": self._errors,
            "retries": self._retries,
        }

    async def _try(self, url: str, data: bytes) -> aiohttp.ClientResponse:
        """One POST; an error status or a refused connection comes back translated (as `_Retry` if repeatable)."""
        assert self._session is not None
        try:
            # never follow a redirect: it would send the caller's prompt wherever an upstream's `Location` says
            response = await self._session.post(url, data=data, timeout=self._timeout, allow_redirects=False)
        except aiohttp.ClientSSLError as exc:
            raise BackendError(f"upstream {self.name} unreachable: {exc.__class__.__name__}", unsent=True) from exc
        except aiohttp.ClientConnectorError as exc:  # the request never left: safe to repeat
            error = BackendError(
                f"upstream {self.name} unreachable: {exc.__class__.__name__}", code="upstream_unreachable", unsent=True
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
        failed = self._error(response.status, body, response.headers)
        if response.status in self.retry_statuses:
            raise _Retry(failed)
        if response.status == 429 and (after := retry_after_s(response.headers.get("retry-after"))) is not None:
            raise _Retry(failed, after)
        raise failed

    async def _send(self, call: Call, *, stream: bool, deadline: float) -> aiohttp.ClientResponse:
        """`_send_until` within `deadline` (loop time)."""
        url, data = self._request(call, stream=stream)
        try:
            async with asyncio.timeout_at(deadline):
                return await self._send_until(url, data, call.stats, stream=stream, deadline=deadline)
        except TimeoutError as exc:
            raise self._waited(stream) from exc

    def _waited(self, stream: bool) -> BackendTimeout:
        limit = "first event" if stream else "answer"
        return BackendTimeout(f"upstream {self.name} timed out waiting for its {limit}")

    async def _send_until(
        self, url: str, data: bytes, stats: CallStats, *, stream: bool, deadline: float
    ) -> aiohttp.ClientResponse:
        """POST `data` to `url` until the upstream answers, retrying what is safe to repeat while `deadline`
        (loop time) allows (`stats`: the tries counted); translate transport failures and error statuses at this
        boundary. The time limit itself is the caller's (one `asyncio.timeout_at` a request: entering and
        leaving one costs ~5 µs)."""
        if self._session is None:
            raise BackendError(f"backend {self.name!r} is not started", unsent=True)
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    return await self._try(url, data)
                except _Retry as retry:
                    wait = self._backoff.delay(
                        stats.attempts, remaining_s=deadline - loop.time(), retry_after=retry.retry_after
                    )
                    if wait is None:
                        raise retry.error from retry.__cause__
                    log.info("upstream %s: %s; retrying in %.3fs", self.name, retry.error.code, wait)
                    stats.attempts += 1
                    stats.retried = retry.error.code
                    self._retries += 1
                    await asyncio.sleep(wait)
        except aiohttp.ConnectionTimeoutError as exc:
            limit_s = self.config.connect_timeout_s
            raise BackendTimeout(f"upstream {self.name}: no connection within {limit_s:g}s", unsent=True) from exc
        except TimeoutError as exc:
            raise self._waited(stream) from exc
        except aiohttp.ClientError as exc:
            raise BackendError(f"upstream {self.name} unreachable: {exc.__class__.__name__}") from exc

    async def _post(self, call: Call) -> Completion:
        """The answer (`_post_json`) as margin's `Completion`."""
        url, data = self._request(call, stream=False)
        payload, content = await self._post_json(url, data, call.stats)
        completion = self._completion(call, payload, content)
        self._served += 1
        return completion

    async def _post_json(self, url: str, data: bytes, stats: CallStats) -> tuple[dict[str, Any], bytes]:
        """POST `data` to `url` (retries as `_send_until` allows) and read its JSON object answer (within
        `max_response_bytes`), all within one time limit, `timeout_s`: the object and its bytes."""
        deadline = asyncio.get_running_loop().time() + self.config.timeout_s
        response: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._send_until(url, data, stats, stream=False, deadline=deadline)
                content = await self._read(response)
        except TimeoutError as exc:
            if response is None:
                raise self._waited(False) from exc
            raise BackendTimeout(f"upstream {self.name} timed out") from exc
        try:
            payload = jsonload.loads(content)
        except jsonload.TooDeep as exc:  # it would fail where margin writes it again (a translation, the cache)
            raise BackendError(f"upstream {self.name} sent JSON that {exc}", code="upstream_bad_response") from exc
        except orjson.JSONDecodeError as exc:
            raise BackendError(f"upstream {self.name} sent invalid JSON", code="upstream_bad_response") from exc
        if not isinstance(payload, dict):
            raise BackendError(f"upstream {self.name} sent JSON that is not an object", code="upstream_bad_response")
        return payload, content

    async def _post_count(self, url: str, data: bytes, key: str) -> int:
        """An upstream's token count of a prompt (`_post_json`: the session, key, retries, time limit and body
        bound every call has): the answer's `key`, a JSON integer from 0 to `MAX_TOKEN_COUNT`, or the call fails
        (`upstream_bad_response`), never a count margin made up."""
        payload, _ = await self._post_json(url, data, CallStats())
        tokens = payload.get(key)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 <= tokens <= MAX_TOKEN_COUNT:
            raise BackendError(
                f"upstream {self.name} sent a token count that is not an integer from 0 to {MAX_TOKEN_COUNT}",
                code="upstream_bad_response",
            )
        return tokens

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
            async for batch in self._events(call, response, deadline):
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


def event_data(line: bytes) -> bytes | None:
    """The data of an SSE `data:` line; None for anything else (comments, other fields, blank lines)."""
    line = line.strip()
    return line[5:].strip() if line.startswith(b"data:") else None
