"""The request path's way out (`margin.pipeline.values.Client`) over ASGI: raw `http.response.*` messages,
errors mapped to their status and OpenAI JSON (`margin.api.errors`; `body_of`: another API's shape, set by a
translating client, `margin.api.translating`).

A client that left is noticed by the write after it left: a server that follows ASGI 2.4 raises from
`send` (an OSError), and uvicorn, whose `send` returns silently on a closed connection, says so on the
cycle object `send` belongs to (`disconnected`, read after each write; no receive task per stream). A client
that stops reading blocks the write once the socket buffers fill: `StallWatch`, one task for the whole
process, cancels a write blocked longer than `server.stream_write_timeout_s`, and the write ends as
`ClientGone(stalled=True)` (the stream ends like a disconnect; the server then closes the connection)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import orjson
from starlette.types import Send

from margin.api.errors import JSON, NOSNIFF_RAW, error_body, error_headers, status_of
from margin.api.heads import STOPPING
from margin.errors import MarginError
from margin.ledger.outbox import OutboxError
from margin.pipeline.values import ClientGone

log = logging.getLogger("margin.api")
JSON_RAW = (b"content-type", JSON.encode())  # a JSON answer's content type, as an ASGI header (built once)
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def _encoded(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), header_value(value)) for name, value in headers.items()]


def header_value(value: str) -> bytes:
    """A header's bytes. Values hold names from the config (a budget's, a flag's), which may be in any script:
    what Latin-1 cannot hold is percent-encoded UTF-8 (`budżet` → `bud%C5%BCet`), never an error after the
    row is written."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return "".join(c if ord(c) < 256 else quote(c) for c in value).encode("latin-1")


class AsgiClient:
    __slots__ = ("_cycle", "_send", "_stalls", "body_of", "refused", "stalled", "started", "task", "writing_since")

    def __init__(self, send: Send, stalls: StallWatch | None = None) -> None:
        self._send = send
        self.body_of: Callable[[MarginError], dict[str, Any]] = error_body  # the error JSON (its API's shape)
        self._cycle = getattr(send, "__self__", None)  # uvicorn's cycle: `disconnected` once the client left
        self._stalls = stalls
        self.started = False
        self.refused: MarginError | None = None  # the error this request was answered with (an in-process caller's)
        self.stalled = False
        self.writing_since: float | None = None
        self.task: asyncio.Task[object] | None = None

    def status_of(self, error: MarginError) -> int:
        return status_of(error)

    def error_event(self, error: MarginError) -> bytes:
        return orjson.dumps(self.body_of(error))

    @property
    def stopping(self) -> bool:
        return bool(getattr(self._cycle, STOPPING, False))

    async def answer(self, body: bytes, headers: Mapping[str, str]) -> None:
        raw = [JSON_RAW, (b"content-length", str(len(body)).encode()), *_encoded(headers)]
        await self._send({"type": "http.response.start", "status": 200, "headers": raw})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def refuse(self, error: MarginError, headers: Mapping[str, str]) -> None:
        self.refused = error
        body = orjson.dumps(self.body_of(error))
        if self.started:  # a failure after the stream's headers left: an error event, then the end; no
            # `[DONE]` when the row could not be recorded (the answer is not acknowledged)
            done = b"" if isinstance(error, OutboxError) else b"data: [DONE]\n\n"
            with contextlib.suppress(ClientGone):
                await self.write(b"data: " + body + b"\n\n")
                await self.end_stream(done)
            return
        merged = {**error_headers(error), **headers}
        raw = [
            JSON_RAW,
            (b"content-length", str(len(body)).encode()),
            NOSNIFF_RAW,
            *_encoded(merged),
        ]
        await self._send({"type": "http.response.start", "status": status_of(error), "headers": raw})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def start_stream(self, headers: Mapping[str, str]) -> None:
        self.started = True
        await self._send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + _encoded(headers)})
        if self._stalls is not None:
            self.task = asyncio.current_task()
            self._stalls.add(self)

    async def write(self, data: bytes) -> None:
        self.writing_since = time.perf_counter()
        try:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
        except asyncio.CancelledError:
            if not self.stalled:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            raise ClientGone(stalled=True) from None
        except OSError as exc:
            raise ClientGone() from exc
        finally:
            self.writing_since = None
        if self._cycle is not None and getattr(self._cycle, "disconnected", False):
            raise ClientGone()

    async def end_stream(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    def close(self) -> None:
        if self._stalls is not None:
            self._stalls.discard(self)

    def check_stall(self, now: float, timeout_s: float) -> None:
        """Called by StallWatch: cancel the request if its current write has been blocked over `timeout_s`."""
        since, task = self.writing_since, self.task
        if since is None or now - since <= timeout_s or task is None or task.done() or self.stalled:
            return
        log.warning("a stream's client read nothing for %.0fs; ending its stream", timeout_s)
        self.stalled = True
        task.cancel()


class StallWatch:
    """Ends streams whose client stopped reading. One task for the whole process looks, a few times per
    timeout, at the write each open stream is blocked in (nothing is armed per write)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._open: set[AsgiClient] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, client: AsgiClient) -> None:
        self._open.add(client)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stream-stall-watch")

    def discard(self, client: AsgiClient) -> None:
        self._open.discard(client)

    async def _run(self) -> None:
        interval = min(1.0, self.timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.perf_counter()
            for client in list(self._open):
                client.check_stall(now, self.timeout_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
