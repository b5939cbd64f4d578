"""A stream's way to the client, driven from inside the request path (the call step, or the cache step
replaying an answer): the headers, then each backend event framed as SSE as soon as it arrives. Events the
backend already holds (`Chunk.more`: they arrived in the same read) are joined to the one before them, so a
burst costs one write. No task is started per stream: a client that left is found by the write that fails
(`ClientGone`), and a client that stops reading by the process-wide stall watch (`margin.api.client`).
The closing comment and `[DONE]` are the flow's, written after the ledger row.

What metering needs is noted on the way (TTFT, the delivered text, the usage the backend reported); the
usage chunk is forwarded only when the client asked for it (`stream_options.include_usage`), saying what the
request is charged (`Delivery._charged`), and added at the end when it asked and the backend sent none. A cache
miss that owns a lease (`Request.unstorable`) hears at the first token when that token is more than text: the
answer will not be stored, its waiters need not wait."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import orjson

from margin.economics import tiers
from margin.economics.money import ZERO_USD, usd_str
from margin.errors import BackendError, MarginError
from margin.pipeline import ceiling
from margin.pipeline.values import ClientGone, Record, Request
from margin.types import Chunk, Usage, choices_of, finish_reason_of

DONE = b"data: [DONE]\n\n"
PARSE_INLINE_BYTES = 256 * 1024  # a stream that delivered more is parsed for its text in a worker thread
FINISH_LOOKBACK = 8  # events read, from the end, for a stream's finish reason (then a usage event, `[DONE]`)
FINISH_EVENT_BYTES = 64 * 1024  # a longer one of them is not parsed for it (a finishing event is a few hundred)


def sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def response_headers(record: Record) -> dict[str, str]:
    headers = {
        "x-margin-request-id": record.request_id,
        "x-request-id": record.request_id,  # OpenAI's header: the SDK's `_request_id`, `with_raw_response`
        "x-margin-overhead-ms": f"{record.overhead_ms():.3f}",
        **record.notices,
    }
    if record.charge is not None or not record.stream:
        headers["x-margin-cost-usd"] = cost_text(record)
    return headers


def cost_text(record: Record) -> str:
    """The cost as the ledger row holds it (`settle`): 0 when no backend was called (a cache hit, a refusal),
    `unknown` for a call at an unknown price (a NULL cost)."""
    if record.charge is None:
        return ZERO_USD
    return usd_str(record.charge.cost_usd) or "unknown"


def closing_comment(record: Record) -> bytes:
    """An SSE comment (ignored by SSE clients) with what is only known once the stream is over."""
    return f": x-margin-cost-usd={cost_text(record)} x-margin-overhead-ms={record.overhead_ms():.3f}\n\n".encode()


async def first_chunk(chunks: AsyncIterator[Chunk], record: Record) -> Chunk | None:
    """The backend's next event (None at its end), its wait counted as the backend's."""
    started = time.perf_counter()
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None
    finally:
        record.backend_wait_s += time.perf_counter() - started


async def close(chunks: AsyncIterator[Chunk]) -> None:
    closer = getattr(chunks, "aclose", None)
    if closer is not None:
        await closer()


@dataclass(slots=True)
class Delivery:
    """One stream's delivery; what it noted stays readable when it ended early (client gone, upstream cut).
    Events are parsed only as far as needed: until the first text (TTFT), and the delivered text only when
    something asks for it (`parts`: the cache, an output guard, counting tokens the backend did not report)."""

    request: Request
    usage: Usage | None = None  # the last usage the backend reported
    tier: str | None = None  # the `service_tier` the backend said served it (first event, usage event)
    usage_sent: bool = False
    failed: MarginError | None = None  # the backend broke off mid-stream (the client got an error event)
    written: int = 0  # bytes written to the client
    unstorable: bool = False  # its first generated event was more than text, and the cache step is to hear of it
    _first: list[Chunk] = field(default_factory=list)  # events up to the first token (parsed for it)
    _rest: list[Chunk] = field(default_factory=list)  # events after it, parsed when the text is read
    _all_text: str | None = None
    _all_generated: str | None = None

    @property
    def parts(self) -> list[str]:
        return [text for chunk in (*self._first, *self._rest) if (text := _text(chunk))]

    async def text(self) -> str:
        """Everything delivered, as text: parsed once, in a worker thread when the stream was long (a 128 MiB
        stream of small events takes seconds)."""
        if self._all_text is None:
            joined = self.text_now
            self._all_text = joined() if self.written <= PARSE_INLINE_BYTES else await asyncio.to_thread(joined)
        return self._all_text

    def text_now(self) -> str:
        """The same text, parsed where it is called."""
        if self._all_text is None:
            self._all_text = "".join(self.parts)
        return self._all_text

    async def generated(self) -> str:
        """Everything delivered that the backend generated (`Chunk.generated`: tool calls and reasoning too),
        to count the tokens it did not report and to tell the cache whether it was text only: parsed once, in
        a worker thread when the stream was long."""
        if self._all_generated is None and self.written > PARSE_INLINE_BYTES:
            return await asyncio.to_thread(self.generated_now)
        return self.generated_now()

    def generated_now(self) -> str:
        if self._all_generated is None:
            self._all_generated = "".join(_generated(chunk) for chunk in (*self._first, *self._rest))
        return self._all_generated

    async def unreplayed(self) -> bool:
        """Whether an event delivered held what a cache hit cannot replay (`Chunk.unreplayed`: citations, images,
        audio); only events that name such a key are parsed, only for an answer the cache would store, and in a
        worker thread when the stream was long (every event is looked at)."""

        def held() -> bool:
            return any(map(_unreplayed, itertools.chain(self._first, self._rest)))

        return held() if self.written <= PARSE_INLINE_BYTES else await asyncio.to_thread(held)

    async def translatable(self) -> bool:
        """Whether an event delivered held a choice to translate (`choices` a list whose first is an object): a
        Responses or Messages stream without one would end as an empty answer said to be complete. Only the
        events up to the first token are read where one of them holds it (the stream's first, parsed already, as a
        rule); a stream without one is read whole (each event parsed once, in a worker thread when it was long).
        Nothing is read on the chat path."""
        if any(map(_has_choice, self._first)):
            return True

        def held() -> bool:
            return any(map(_has_choice, self._rest))

        return held() if self.written <= PARSE_INLINE_BYTES else await asyncio.to_thread(held)

    async def fail(self, error: MarginError) -> None:
        """The stream's failure noticed once it was delivered: the client's error event after it (`failed`)."""
        self.failed = error
        await self._write([sse(self.request.client.error_event(error))])

    def finish_reason(self) -> str | None:
        """The finish reason the stream's last events name (a cache hit replays it). Only the last
        `FINISH_LOOKBACK` events are read, and none over `FINISH_EVENT_BYTES`: a stream cut before its finish has
        none, and is not parsed whole."""
        chunks = itertools.chain(reversed(self._rest), reversed(self._first))
        events = (c for chunk in chunks for c in (_each(chunk.events) if chunk.events is not None else [chunk]))
        for chunk in itertools.islice(events, FINISH_LOOKBACK):
            if chunk.raw is not None and len(chunk.raw) > FINISH_EVENT_BYTES:  # not parsed on the loop for this
                continue
            try:
                reason = finish_reason_of(chunk.payload)
            except ValueError:  # forwarded as the upstream sent it, unparsed
                continue
            if reason is not None:
                return reason
        return None

    async def run(
        self, chunks: AsyncIterator[Chunk], first: Chunk | None, translate: Callable[[Exception], MarginError]
    ) -> None:
        """Deliver `first` and the rest of `chunks`. A backend failure mid-stream becomes an OpenAI error event
        (`failed`); `ClientGone` propagates. The backend's iterator is closed in every case."""
        client = self.request.client
        held: list[bytes] = []
        await client.start_stream(response_headers(self.request.record))
        chunk = first
        try:
            while chunk is not None:
                try:
                    self._take(chunk, held)
                except ValueError as exc:  # an event that does not parse: the upstream's failure
                    raise BackendError(
                        "the upstream sent an invalid stream event", code="upstream_bad_response"
                    ) from exc
                if self.unstorable and self.request.unstorable is not None:  # once: its waiters go upstream now
                    self.unstorable = False
                    await self.request.unstorable()
                if not chunk.more:
                    if held:
                        await self._write(held)
                    chunk = await first_chunk(chunks, self.request.record)
                else:  # the backend already holds the next event (same read): no wait to count
                    chunk = await anext(chunks, None)
        except Exception as exc:
            if isinstance(exc, ClientGone):
                raise
            self.failed = translate(exc)
            held.append(sse(client.error_event(self.failed)))
        finally:
            if held:
                try:
                    await self._write(held)
                finally:
                    await close(chunks)
            else:
                await close(chunks)

    def _take(self, chunk: Chunk, held: list[bytes]) -> None:
        """Note what metering needs of one event (or a run of them) and frame it (into `held`)."""
        request = self.request
        record = request.record
        if chunk.events is not None:
            if record.ttft_s is not None and request.rewrite is None:  # forwarded as they came, in one piece
                self._rest.append(chunk)
                held.append(b"data: " + b"\n\ndata: ".join(chunk.events) + b"\n\n")
            else:  # the first token may be among them, or the guard rewrites events: one by one
                for raw in chunk.events:
                    self._take(Chunk(raw=raw), held)
            return
        if record.ttft_s is not None:
            self._rest.append(chunk)
        else:  # kept without text too (a role, tool calls, reasoning): what it generated is billed
            self._first.append(chunk)
            if chunk.text or _generated(chunk):  # a tool call's or reasoning's first token is one too
                record.ttft_s = time.perf_counter() - record.started
                # read only for a cache miss that owns a lease: the first token tells whether the answer is text
                self.unstorable = request.unstorable is not None and len(_generated(chunk)) > len(_text(chunk))
        if chunk.usage is not None:  # parsed already (it names usage): its tier is read at no extra cost
            self.usage = self._charged(chunk, chunk.usage)
            self.tier = tiers.answered(chunk.payload) or self.tier
            self.usage_sent = self.usage_sent or request.wants_usage
        if request.rewrite is not None and request.rewrite(chunk.payload):
            chunk.raw = None
        framed = _frame(chunk, request.wants_usage)
        if framed is not None:
            held.append(framed)

    def _charged(self, chunk: Chunk, usage: Usage) -> Usage:
        """The usage a usage event is charged at (`margin.pipeline.ceiling.held`: the row's), which the event
        says where that is not what the upstream's said (held at a hard budget's ceiling, cached tokens past the
        prompt): what the client is told is what it is charged. Only this event, parsed already, is read."""
        target = self.request.record.target
        charged = usage if target is None else ceiling.held(usage, self.request, target)
        reported = chunk.payload.get("usage")
        if charged is not usage or (reported is not None and not charged.says(reported)):
            chunk.payload["usage"] = charged.to_openai()
            chunk.raw = None  # serialized again with it
            chunk.usage = charged
        return charged

    async def _write(self, held: list[bytes]) -> None:
        record = self.request.record
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        self.written += len(data)
        started = time.perf_counter()
        try:
            await self.request.client.write(data)
        finally:
            record.client_wait_s += time.perf_counter() - started

    async def write_usage(self, payload: dict[str, object]) -> None:
        """The usage chunk the client asked for, when the backend sent none (after metering)."""
        await self._write([sse(orjson.dumps(payload))])


def _each(events: list[bytes]) -> Iterator[Chunk]:
    """A run's events, last first, each a chunk of its own (parsed on use)."""
    return (Chunk(raw=raw) for raw in reversed(events))


def _has_choice(chunk: Chunk) -> bool:
    """Whether an event (or one of a run's) holds a choice to translate; one that does not parse holds none."""
    try:
        if chunk.events is not None:
            return any(_first_choice(orjson.loads(raw)) for raw in chunk.events)
        return _first_choice(chunk.payload)
    except ValueError:
        return False


def _first_choice(payload: object) -> bool:
    choices = choices_of(payload)
    return bool(choices) and isinstance(choices[0], dict)


def _text(chunk: Chunk) -> str:
    """A delivered chunk's text (one that does not parse has none: it was forwarded as the upstream sent it)."""
    try:
        return chunk.text
    except ValueError:
        return ""


def _generated(chunk: Chunk) -> str:
    try:
        return chunk.generated()
    except ValueError:
        return ""


def _unreplayed(chunk: Chunk) -> bool:
    try:
        return chunk.unreplayed()
    except ValueError:
        return False


def _frame(chunk: Chunk, wants_usage: bool) -> bytes | None:
    if chunk.usage is not None and not wants_usage:
        if chunk.is_usage_only:
            return None
        payload = {k: v for k, v in chunk.payload.items() if k != "usage"}
        return sse(orjson.dumps(payload))
    return sse(chunk.raw if chunk.raw is not None else orjson.dumps(chunk.payload))
