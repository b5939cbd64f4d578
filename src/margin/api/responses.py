"""POST /v1/responses: OpenAI's Responses API over margin's request path. The body is validated and translated
to a chat request at this edge (`margin.responses`); the request path (`margin.pipeline.flow`) runs it as a
chat, the same steps, admission and metering, and writes its answer through `ResponsesClient`, which turns
the chat JSON into a Response object and the chat stream's chunks into the Responses stream's events. The
ledger row names the endpoint `responses`; the request path itself sees a chat (its backends, cache and
guard), so the chat path costs nothing more."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import orjson
from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.types import ASGIApp

from margin.api.client import AsgiClient
from margin.api.errors import error_body
from margin.api.inference import Run, arrive
from margin.api.responses_out import StreamEvents, from_chat, skeleton
from margin.errors import MarginError
from margin.pipeline.stream import DONE
from margin.pipeline.values import ClientGone, Record
from margin.protocol import Endpoint
from margin.responses import ResponsesRequest, parse

DATA = b"data: "


class ResponsesClient:
    """The request path's `Client` for a Responses call: the chat answer it is given, written as the
    Responses API's, through the connection's `AsgiClient`."""

    __slots__ = ("body", "events", "inner", "request_id", "started")

    def __init__(self, inner: AsgiClient, body: ResponsesRequest, request_id: str) -> None:
        self.inner, self.body, self.request_id = inner, body, request_id
        self.events: StreamEvents | None = None
        self.started = False

    def status_of(self, error: MarginError) -> int:
        return self.inner.status_of(error)

    def error_event(self, error: MarginError) -> bytes:
        return self.inner.error_event(error)

    async def answer(self, body: bytes, headers: Mapping[str, str]) -> None:
        try:
            chat = orjson.loads(body)
        except orjson.JSONDecodeError:
            chat = None
        response = from_chat(chat, skeleton(self.body, f"resp_{self.request_id}"), self.request_id)
        await self.inner.answer(orjson.dumps(response), headers)

    async def refuse(self, error: MarginError, headers: Mapping[str, str]) -> None:
        if not self.started:
            await self.inner.refuse(error, headers)
            return
        events = self._events()
        with contextlib.suppress(ClientGone):  # a failure after the stream's headers left: `error`, then the end
            await self.inner.write(events.fail(error_body(error)["error"]))
            await self.inner.end_stream(b"")

    async def start_stream(self, headers: Mapping[str, str]) -> None:
        self.started = True
        await self.inner.start_stream(headers)

    def _events(self) -> StreamEvents:
        if self.events is None:
            self.events = StreamEvents(skeleton(self.body, f"resp_{self.request_id}"), self.request_id)
        return self.events

    async def write(self, data: bytes) -> None:
        """Chat chunks (SSE frames, one or several) as the events they make; the first write opens with
        `response.created` and `response.in_progress`."""
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
        """The last events, then the flow's closing comment (cost, overhead); no `[DONE]`, which the Responses
        API does not send."""
        fresh = self.events is None
        events = self._events()
        comment = data[: -len(DONE)] if data.endswith(DONE) else data
        await self.inner.end_stream((events.start() if fresh else b"") + events.end() + comment)


async def responses(request: HttpRequest) -> Response | ASGIApp:
    arrived = await arrive(request, parse)
    if isinstance(arrived, Response):
        return arrived
    (started, services, request_id, headers, principal, batch), (body, data, chat) = arrived
    record = Record(
        request_id, Endpoint.RESPONSES, body.model, body.stream, started=started, principal=principal,
        user=body.user, batch=batch,
    )  # fmt: skip
    args = (request_id, Endpoint.CHAT, headers, data, chat, principal, record, started)
    return Run(services.flow, services.stalls, args, lambda inner: ResponsesClient(inner, body, request_id))
