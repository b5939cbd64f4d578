"""The request path's `Client` for an endpoint that margin answers with a chat and whose answer is translated
(OpenAI's Responses API, Anthropic's Messages API): the chat JSON it is given becomes the endpoint's answer, the
chat stream's chunks become the endpoint's events, written through the connection's `AsgiClient`. A subclass
says how (`whole`, `new_events`) and in which shape errors are written (`body_of`)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Protocol

import orjson

from margin.api.client import AsgiClient
from margin.api.errors import error_body
from margin.errors import MarginError
from margin.ledger.outbox import OutboxError
from margin.pipeline.stream import DONE
from margin.pipeline.values import ClientGone

DATA = b"data: "


class Events(Protocol):
    """One stream's translation: chat chunks in, the endpoint's events out (as SSE bytes)."""

    def start(self) -> bytes: ...

    def chunk(self, payload: Any) -> bytes: ...

    def fail(self, error: Any) -> bytes: ...

    def end(self) -> bytes: ...


class TranslatingClient:
    __slots__ = ("events", "inner", "started")

    def __init__(self, inner: AsgiClient) -> None:
        self.inner = inner
        inner.body_of = self.body_of  # errors before the stream (and the row's status) in the endpoint's shape
        self.events: Events | None = None
        self.started = False

    def body_of(self, error: MarginError) -> dict[str, Any]:
        """An error's JSON, in the endpoint's shape (OpenAI's unless overridden)."""
        return error_body(error)

    def whole(self, chat: Any) -> dict[str, Any]:
        """A whole chat completion (its JSON, None if it did not parse) as the endpoint's answer."""
        raise NotImplementedError

    def new_events(self) -> Events:
        raise NotImplementedError

    def status_of(self, error: MarginError) -> int:
        return self.inner.status_of(error)

    def error_event(self, error: MarginError) -> bytes:
        return self.inner.error_event(error)

    @property
    def stopping(self) -> bool:
        return self.inner.stopping

    async def answer(self, body: bytes, headers: Mapping[str, str]) -> None:
        try:
            chat = orjson.loads(body)
        except orjson.JSONDecodeError:
            chat = None
        whole = self.whole(chat)
        await self.settle(whole)
        await self.inner.answer(orjson.dumps(whole), headers)

    async def settle(self, answer: dict[str, Any]) -> None:
        """Work done with a whole answer before it is sent (nothing, unless overridden: a stored response)."""

    async def settle_stream(self, events: Events, billed: bool = True) -> None:
        """Work done before a stream's last events are sent (nothing, unless overridden); `billed`: false where
        the request's row could not be written (an `OutboxError`)."""

    async def refuse(self, error: MarginError, headers: Mapping[str, str]) -> None:
        if not self.started:
            await self.inner.refuse(error, headers)
            return
        events = self._events()
        failed = events.fail(self.body_of(error)["error"])
        await self.settle_stream(events, billed=not isinstance(error, OutboxError))  # no row: nothing billed
        with contextlib.suppress(ClientGone):  # a failure after the stream's headers left: the error, then the end
            await self.inner.write(failed)
            await self.inner.end_stream(events.end())

    async def start_stream(self, headers: Mapping[str, str]) -> None:
        self.started = True
        await self.inner.start_stream(headers)

    def _events(self) -> Events:
        if self.events is None:
            self.events = self.new_events()
        return self.events

    async def write(self, data: bytes) -> None:
        """Chat chunks (SSE frames, one or several) as the events they make; the first write opens the stream
        with the endpoint's first events."""
        fresh = self.events is None
        events = self._events()
        out = [events.start()] if fresh else []
        for frame in data.split(b"\n\n"):
            if not frame.startswith(DATA):
                continue
            try:
                payload = orjson.loads(frame[len(DATA) :])
            except orjson.JSONDecodeError:  # an upstream's event that does not parse: nothing to translate
                continue
            if isinstance(payload, dict) and isinstance(payload.get("error"), dict):  # the chat path's error event
                out.append(events.fail(payload["error"]))
            else:
                out.append(events.chunk(payload))
        joined = b"".join(out)
        if joined:
            await self.inner.write(joined)

    async def end_stream(self, data: bytes) -> None:
        """The last events, then the flow's closing comment (cost, overhead); no `[DONE]`, which neither API
        sends."""
        fresh = self.events is None
        events = self._events()
        head = events.start() if fresh else b""
        await self.settle_stream(events)
        comment = data[: -len(DONE)] if data.endswith(DONE) else data
        await self.inner.end_stream(head + events.end() + comment)
