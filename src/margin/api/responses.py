"""POST /v1/responses: OpenAI's Responses API over margin's request path. The body is validated and translated
to a chat request at this edge (`margin.responses`); the request path (`margin.pipeline.flow`) runs it as a
chat, the same steps, admission and metering, and writes its answer through `ResponsesClient`, which turns
the chat JSON into a Response object and the chat stream's chunks into the Responses stream's events. The
ledger row names the endpoint `responses`; the request path itself sees a chat (its backends, cache and
guard), so the chat path costs nothing more."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.types import ASGIApp

from margin.api.client import AsgiClient
from margin.api.inference import Run, arrive
from margin.api.responses_out import StreamEvents, from_chat, skeleton
from margin.api.translating import TranslatingClient
from margin.pipeline.values import Record
from margin.protocol import Endpoint
from margin.responses import ResponsesRequest, parse


class ResponsesClient(TranslatingClient):
    """The request path's `Client` for a Responses call: the chat JSON as a Response object, the chat stream's
    chunks as the Responses stream's events (the first write opens with `response.created` and
    `response.in_progress`; an error once streaming is `error`, then `response.failed`)."""

    __slots__ = ("body", "request_id")

    def __init__(self, inner: AsgiClient, body: ResponsesRequest, request_id: str) -> None:
        super().__init__(inner)
        self.body, self.request_id = body, request_id

    def whole(self, chat: Any) -> dict[str, Any]:
        return from_chat(chat, skeleton(self.body, f"resp_{self.request_id}"), self.request_id)

    def new_events(self) -> StreamEvents:
        return StreamEvents(skeleton(self.body, f"resp_{self.request_id}"), self.request_id)


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
