"""Response helpers: OpenAI-shaped errors and the SSE responder for streams."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from margin.economics.money import usd_str
from margin.errors import MarginError
from margin.pipeline.call import DONE, MeteredStream
from margin.pipeline.context import RequestContext

JSON = "application/json"


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


class SSEResponse:
    """Streams a MeteredStream to the client. A client that disconnects cancels the pump at once (even
    while the backend is silent); the backend is then stopped and the request settled as `client_closed`.
    Settling always runs, in a task the disconnect cannot cancel."""

    def __init__(self, ctx: RequestContext, stream: MeteredStream, services: Any) -> None:
        self.ctx = ctx
        self.stream = stream
        self.services = services
        self.disconnected = False

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
        pump = asyncio.create_task(self._pump(send))
        watcher = asyncio.create_task(self._watch(receive, pump))
        try:
            await pump
        except (asyncio.CancelledError, OSError):
            if not self.disconnected and not pump.cancelled():
                raise
            self.disconnected = True
        finally:
            watcher.cancel()
            done = asyncio.get_running_loop().create_future()
            self.services.spawn(self._settle(done))
            await asyncio.shield(done)
        if not self.disconnected:
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
            started = time.perf_counter()
            await send({"type": "http.response.body", "body": body, "more_body": True})
            self.ctx.client_wait_s += time.perf_counter() - started

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
                ctx.status, ctx.http_status = "client_closed", 499
            await self.stream.aclose()
            await self.services.pipeline.finish(ctx)
        finally:
            if not done.done():
                done.set_result(None)
