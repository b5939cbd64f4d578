"""Response helpers: OpenAI-shaped errors and the SSE responder for streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from margin.economics.money import usd_str
from margin.errors import MarginError
from margin.ledger.outbox import OutboxError
from margin.pipeline.call import DONE, MeteredStream, sse
from margin.pipeline.context import RequestContext

JSON = "application/json"
log = logging.getLogger("margin.api")


def error_response(error: MarginError, request_id: str | None = None) -> Response:
    headers = dict(error.headers)
    if request_id:
        headers["x-margin-request-id"] = request_id
    return Response(orjson.dumps(error.to_body()), status_code=error.status, media_type=JSON, headers=headers)


def margin_headers(ctx: RequestContext) -> dict[str, str]:
    headers = {"x-margin-request-id": ctx.request_id, "x-margin-overhead-ms": f"{ctx.overhead_ms():.3f}", **ctx.notices}
    if ctx.charge is not None:
        headers["x-margin-cost-usd"] = usd_str(ctx.charge.cost_usd) or "unknown"
    elif not ctx.is_stream:
        headers["x-margin-cost-usd"] = "0.000000000"
    return headers


def closing_comment(ctx: RequestContext) -> bytes:
    """An SSE comment (ignored by SSE clients) with what is only known once the stream is over."""
    charge = ctx.charge
    cost = usd_str(charge.cost_usd) if charge and charge.cost_usd is not None else "unknown"
    return f": x-margin-cost-usd={cost} x-margin-overhead-ms={ctx.overhead_ms():.3f}\n\n".encode()


class StallWatch:
    """Ends streams whose client stopped reading. A write to such a client blocks once the socket buffers
    fill; one task for the whole process looks, a few times per timeout, at the write each open stream is
    blocked in (nothing is armed per write), and cancels a stream blocked longer than
    `server.stream_write_timeout_s`: it then ends like a disconnect (`client_closed`, backend stopped, row
    written, budget settled) and the connection is closed."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._open: set[SSEResponse] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, response: SSEResponse) -> None:
        self._open.add(response)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stream-stall-watch")

    def discard(self, response: SSEResponse) -> None:
        self._open.discard(response)

    async def _run(self) -> None:
        interval = min(1.0, self.timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.perf_counter()
            for response in list(self._open):
                response.check_stall(now, self.timeout_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class SSEResponse:
    """Streams a MeteredStream to the client. A client that disconnects cancels the pump at once (even
    while the backend is silent), and so does one that stops reading (`StallWatch`); the backend is then
    stopped and the request settled as `client_closed`. Settling always runs, in a task the disconnect
    cannot cancel."""

    def __init__(self, ctx: RequestContext, stream: MeteredStream, services: Any) -> None:
        self.ctx = ctx
        self.stream = stream
        self.services = services
        self.disconnected = False
        self.stalled = False
        self.unrecorded: MarginError | None = None  # the row could not be recorded: no [DONE]
        self._pump_task: asyncio.Task[None] | None = None
        self._writing_since: float | None = None  # perf_counter of the write in progress

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            **margin_headers(self.ctx),
        }
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            }
        )
        pump = self._pump_task = asyncio.create_task(self._pump(send))
        watcher = asyncio.create_task(self._watch(receive, pump))
        stalls: StallWatch | None = getattr(self.services, "stalls", None)
        if stalls is not None:
            stalls.add(self)
        try:
            await pump
        except (asyncio.CancelledError, OSError):
            if not self.disconnected and not pump.cancelled():
                raise
            self.disconnected = True
        finally:
            if stalls is not None:
                stalls.discard(self)
            watcher.cancel()
            done = asyncio.get_running_loop().create_future()
            self.services.spawn(self._settle(done))
            await asyncio.shield(done)
        if self.disconnected:
            return
        if self.unrecorded is not None:  # not acknowledged: the client gets an error event, never [DONE]
            await send({"type": "http.response.body", "body": sse(orjson.dumps(self.unrecorded.to_body()))})
            return
        await send({"type": "http.response.body", "body": closing_comment(self.ctx) + DONE, "more_body": False})

    async def _pump(self, send: Send) -> None:
        """Events go out as soon as they are framed; events the backend already holds (`ready`) are joined
        to the one before them, so a burst costs one write, not one per event."""
        held: list[bytes] = []
        async for data in self.stream:
            held.append(data)
            if not self.stream.ready:
                await self._write(send, held)
        if held:
            await self._write(send, held)

    async def _write(self, send: Send, held: list[bytes]) -> None:
        body = b"".join(held)
        held.clear()
        if body:
            started = self._writing_since = time.perf_counter()
            await send({"type": "http.response.body", "body": body, "more_body": True})
            self._writing_since = None
            self.ctx.client_wait_s += time.perf_counter() - started

    def check_stall(self, now: float, timeout_s: float) -> None:
        """Called by StallWatch: cancel the pump if its current write has been blocked over `timeout_s`."""
        since, pump = self._writing_since, self._pump_task
        if since is None or now - since <= timeout_s or pump is None or pump.done():
            return
        log.warning("request %s: the client read nothing for %.0fs; ending its stream", self.ctx.request_id, timeout_s)
        self.stalled = self.disconnected = True
        pump.cancel()

    async def _watch(self, receive: Receive, pump: asyncio.Task[None]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not pump.done():
                    self.disconnected = True
                    pump.cancel()
                return

    async def _settle(self, done: asyncio.Future[None]) -> None:
        ctx = self.ctx
        try:
            ctx.e2e_s = time.perf_counter() - ctx.started
            if self.disconnected and ctx.status == "ok":
                if self.stalled:
                    ctx.error = MarginError("the client stopped reading the stream", code="stream_write_timeout")
                ctx.status, ctx.http_status = "client_closed", 499
            await self.stream.aclose()
            await self.services.pipeline.finish(ctx)
        except OutboxError as exc:
            self.unrecorded = exc
        finally:
            if not done.done():
                done.set_result(None)
