"""The end of the request side: call the backend. Streams are wrapped in `MeteredStream`, which frames
SSE, notes TTFT and delivered text, and keeps or adds the usage chunk as the client asked."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from margin.backends.base import Call, Chunk, Usage
from margin.errors import (
    BackendError,
    BackendFailedUnexpectedly,
    MarginError,
    Overloaded,
    StreamTimeLimit,
    UpstreamRateLimited,
)
from margin.pipeline.context import RequestContext, Target
from margin.pipeline.stages.route import unavailable
from margin.protocol import Endpoint
from margin.routing.breaker import Breakers

log = logging.getLogger("margin.call")

DONE = b"data: [DONE]\n\n"


def sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def _translate(backend: str, exc: Exception) -> MarginError:
    if isinstance(exc, MarginError):
        return exc
    log.warning("backend %s raised %s", backend, exc.__class__.__name__, exc_info=exc)
    return BackendFailedUnexpectedly(f"backend {backend} failed: {exc.__class__.__name__}: {exc}")


class MeteredStream:
    """Async iterator of SSE events over a backend's chunks (the closing `[DONE]` is the responder's).
    `prime()` fetches the first chunk before any byte is sent, so an upstream that fails at once gets a
    proper HTTP error status."""

    def __init__(self, ctx: RequestContext, chunks: AsyncIterator[Chunk], on_end: Any) -> None:
        self.ctx = ctx
        self._chunks = chunks
        self._on_end = on_end
        self._first: Chunk | None = None
        self._usage_sent = False
        self._done = False
        self._closed = False
        self.failed: MarginError | None = None  # the backend's failure once the stream had started
        self.ready = False  # the next event is already in memory: a responder may hold this one to join it

    async def _next(self) -> Chunk | None:
        started = time.perf_counter()
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return None
        finally:
            self.ctx.backend_wait_s += time.perf_counter() - started

    async def prime(self) -> None:
        try:
            self._first = await self._next()
        except Exception as exc:
            await self.aclose()
            raise _translate(self._backend, exc) from exc

    @property
    def _backend(self) -> str:
        return self.ctx.target.backend_name if self.ctx.target else "?"

    def __aiter__(self) -> MeteredStream:
        return self

    def _frame(self, chunk: Chunk) -> bytes | None:
        ctx = self.ctx
        if chunk.text:
            if ctx.ttft_s is None:
                ctx.ttft_s = time.perf_counter() - ctx.started
            ctx.delivered_text.append(chunk.text)
        if chunk.usage is not None and ctx.call is not None:
            ctx.call.stats.usage = chunk.usage
        if ctx.stream_rewrite is not None and ctx.stream_rewrite(chunk.payload):
            chunk.raw = None
        wants_usage = getattr(ctx.request, "include_usage", False)
        if chunk.usage is not None and not wants_usage:
            if chunk.is_usage_only:
                return None
            payload = {k: v for k, v in chunk.payload.items() if k != "usage"}
            return sse(orjson.dumps(payload))
        if chunk.usage is not None:
            self._usage_sent = True
        return sse(chunk.raw if chunk.raw is not None else orjson.dumps(chunk.payload))

    def _closing_usage(self) -> bytes | None:
        """The usage chunk a client asked for (`stream_options.include_usage`) when the backend sent none."""
        ctx = self.ctx
        if self._usage_sent or not getattr(ctx.request, "include_usage", False) or ctx.call is None:
            return None
        from margin.pipeline.stages.meter import resolve_usage

        usage: Usage = resolve_usage(ctx)
        ctx.call.stats.usage = usage
        payload = {
            "id": ctx.call.response_id,
            "object": _chunk_object(ctx.endpoint),
            "created": int(time.time()),
            "model": ctx.call.public_model,
            "choices": [],
            "usage": usage.to_openai(),
        }
        return sse(orjson.dumps(payload))

    async def __anext__(self) -> bytes:
        while not self._done:
            chunk, self._first = self._first, None
            if chunk is None:
                try:
                    chunk = await self._next()
                except Exception as exc:
                    return self._fail(exc)
            if chunk is None:
                self._done = True
                closing = self._closing_usage()
                if closing is not None:
                    self.ready = False
                    return closing
                break
            framed = self._frame(chunk)
            if framed is not None:
                self.ready = chunk.more
                return framed
            if self.ready and not chunk.more:  # a dropped event ended the burst: release what the responder holds
                self.ready = False
                return b""
        self.ready = False
        raise StopAsyncIteration

    def _fail(self, exc: Exception) -> bytes:
        """A mid-stream failure: the client gets an OpenAI error event, the ledger the delivered tokens."""
        error = self.failed = _translate(self._backend, exc)
        self.ctx.fail(error)
        self._done, self.ready = True, False
        return sse(orjson.dumps(error.to_body()))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        closer = getattr(self._chunks, "aclose", None)
        try:
            if closer is not None:
                await closer()
        finally:
            self._on_end()


def _chunk_object(endpoint: Endpoint) -> str:
    return "text_completion" if endpoint is Endpoint.COMPLETIONS else "chat.completion.chunk"


def _retryable(error: MarginError) -> bool:
    """Worth trying the next candidate: the backend failed, timed out, is overloaded or rate limits us (not a
    bad request)."""
    return isinstance(error, BackendError | Overloaded | UpstreamRateLimited)


def backend_fault(error: MarginError) -> bool:
    """What the circuit breaker counts: the backend itself failed (5xx, timeout, unreachable). Never a client
    error (4xx, a bad schema or token id), a full queue, or an exception the request's input provoked: no
    caller can open a backend's circuit for every tenant."""
    return isinstance(error, BackendError) and not isinstance(error, BackendFailedUnexpectedly | StreamTimeLimit)


class BackendCall:
    """The pipeline's terminal: hands the request to the routed backend, falling back along
    `ctx.candidates` (already limited to the caller's jurisdictions) when a backend fails before answering.
    A backend whose circuit is open is passed over; a half-open one takes this request as its probe."""

    def __init__(self, meter: Any, breakers: Breakers | None = None) -> None:
        self.meter = meter  # economics.meter.Meter: shares busy time among concurrent requests
        self.breakers = breakers or Breakers()

    async def __call__(self, ctx: RequestContext) -> None:
        if ctx.target is None:
            raise BackendError("no backend was chosen for this request")
        candidates = ctx.candidates or [ctx.target]
        last: MarginError | None = None
        for index, target in enumerate(candidates):
            name = target.backend_name
            if not self.breakers.acquire(name):  # opened (or probed by another request) since routing
                last = Overloaded(f"circuit open on {name}", code="backend_unavailable")
                continue
            ctx.target = target
            started = time.perf_counter()
            try:
                await self._attempt(ctx, target)
            except MarginError as exc:
                if not _retryable(exc):
                    self.breakers.release(name)
                    raise
                self._failed(name, exc)
                last = exc
                if index + 1 < len(candidates):
                    log.warning("request %s: %s failed (%s); falling back", ctx.request_id, name, exc)
                continue
            except BaseException:  # cancelled (the client left) or a bug: no verdict on the backend
                self.breakers.release(name)
                raise
            self.breakers.success(name, time.perf_counter() - started)
            _note_recovery(ctx, last)
            return
        assert last is not None
        if ctx.residency_filtered or last.code == "backend_unavailable":
            raise unavailable(ctx, f"last error: {last.message}") from last
        raise last

    def _failed(self, backend: str, error: MarginError) -> None:
        if backend_fault(error):
            self.breakers.failure(backend, error.code, error.message)
        else:
            self.breakers.note(backend, error.code, error.message)
            self.breakers.release(backend)

    async def _attempt(self, ctx: RequestContext, target: Target) -> None:
        ctx.call = Call(
            ctx.endpoint,
            ctx.request,
            ctx.raw,
            target.public,
            target.model.upstream_model or target.public,
            ctx.request_id,
        )
        clock = self.meter.clocks[target.backend_name]
        mark, probe = clock.enter(), self.meter.probe(target.backend_name)

        def leave() -> None:
            ctx.busy_share_s = clock.leave(mark)
            if probe is not None and ctx.call is not None:
                busy = ctx.call.stats.busy_s if ctx.call.stats.busy_s is not None else ctx.busy_share_s
                ctx.measured_j = self.meter.measured_j(probe, busy)
            if stream is not None and stream.failed is not None:  # broke mid-stream: the breaker hears of it
                self._failed(target.backend_name, stream.failed)

        stream: MeteredStream | None = None
        if ctx.is_stream and ctx.endpoint is not Endpoint.EMBEDDINGS:
            try:
                chunks = target.backend.stream(ctx.call)
            except Exception as exc:
                leave()
                raise _translate(target.backend_name, exc) from exc
            stream = MeteredStream(ctx, chunks, leave)
            await stream.prime()
            ctx.stream = stream
            return
        started = time.perf_counter()
        try:
            if ctx.endpoint is Endpoint.EMBEDDINGS:
                ctx.completion = await target.backend.embed(ctx.call)
            else:
                ctx.completion = await target.backend.complete(ctx.call)
        except Exception as exc:
            raise _translate(target.backend_name, exc) from exc
        finally:
            ctx.backend_wait_s += time.perf_counter() - started
            leave()


def _note_recovery(ctx: RequestContext, fault: MarginError | None) -> None:
    """An answer that needed a fallback or a retry says so in its row (status, and the fault's code)."""
    if fault is not None:
        ctx.status, ctx.fault_code = "fallback", fault.code
    elif ctx.call is not None and ctx.call.stats.attempts > 1:
        ctx.status, ctx.fault_code = "retried", ctx.call.stats.retried
