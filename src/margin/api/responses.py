"""POST /v1/responses: OpenAI's Responses API over margin's request path. The body is validated and translated
to a chat request at this edge (`margin.responses`); the request path (`margin.pipeline.flow`) runs it as a
chat, the same steps, admission and metering, and writes its answer through `ResponsesClient`, which turns
the chat JSON into a Response object and the chat stream's chunks into the Responses stream's events. The
ledger row names the endpoint `responses`; the request path itself sees a chat (its backends, cache and
guard), so the chat path costs nothing more. With `responses.store` on, a `previous_response_id`'s stored turns
are prepended to the input before that (`margin.api.stored`), and the answer is stored before it is sent.

POST /v1/responses/input_tokens counts such a request's input tokens (`input_tokens`, margin.api.counting).
POST /v1/responses/compact (`compact`) is passed through, not translated: the request path runs it as its own
endpoint, to an `openai` backend that compacts (`responses_compact`; any other model is a 400 naming `model`),
and meters the upstream's answer from its Responses usage."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.types import ASGIApp

from margin.api.client import AsgiClient
from margin.api.counting import Count, answer, refused
from margin.api.errors import error_body
from margin.api.inference import Run, arrive, handle, unmetered_error
from margin.api.responses_out import StreamEvents, from_chat, skeleton, usage_of
from margin.api.stored import Keeper, continued
from margin.api.translating import Events, TranslatingClient
from margin.errors import MarginError
from margin.pipeline.values import Record
from margin.protocol import ChatCompletionRequest, Endpoint
from margin.responses import ResponsesRequest
from margin.responses_chat import expand, input_items, parse
from margin.types import Principal

Parsed = tuple[ResponsesRequest, dict[str, Any], ChatCompletionRequest]


class ResponsesClient(TranslatingClient):
    """The request path's `Client` for a Responses call: the chat JSON as a Response object, the chat stream's
    chunks as the Responses stream's events (the first write opens with `response.created` and
    `response.in_progress`; an error once streaming is `error`, then `response.failed`). With a `keeper`, the
    Response is stored before it is answered (before a stream's last events)."""

    __slots__ = ("body", "keeper", "record", "request_id")

    def __init__(self, inner: AsgiClient, body: ResponsesRequest, record: Record, keeper: Keeper | None = None) -> None:
        super().__init__(inner)
        self.body, self.record, self.request_id, self.keeper = body, record, record.request_id, keeper

    def _skeleton(self) -> dict[str, Any]:
        return skeleton(self.body, f"resp_{self.request_id}", self.keeper is not None)

    def whole(self, chat: Any) -> dict[str, Any]:
        return from_chat(chat, self._skeleton(), self.request_id, self.record.usage)  # the row's, if the chat has none

    def new_events(self) -> StreamEvents:
        return StreamEvents(self._skeleton(), self.request_id)

    async def settle(self, answer: dict[str, Any]) -> None:
        if self.keeper is not None:
            await self.keeper.keep(answer)

    async def settle_stream(self, events: Events, billed: bool = True) -> None:
        """A failed stream's Response takes the usage its row bills (what was produced before it broke; null
        where no row could be written); a whole one is stored, with a keeper."""
        if isinstance(events, StreamEvents) and events.failed:
            usage = self.record.usage if billed else None
            events.response["usage"] = usage_of(usage.to_openai()) if usage is not None else None
        elif self.keeper is not None and isinstance(events, StreamEvents):
            events.close()
            await self.keeper.keep(events.response)


async def responses(request: HttpRequest) -> Response | ASGIApp:
    storing = request.app.state.services.settings.responses.store
    arrived = await arrive(request, lambda data: (data, parse(data, storing)))
    if isinstance(arrived, Response):
        return arrived
    (started, services, request_id, headers, principal, batch), (data, parsed) = arrived
    keeper = None
    try:
        body, chat_json, chat = await _whole(services, principal, data, parsed)
        if storing and body.store is not False and batch is None:  # OpenAI's default: stored unless `store: false`
            keeper = Keeper(services, principal, input_items(data, request_id), body.previous_response_id)
    except MarginError as exc:
        return unmetered_error(exc, request_id, started)
    record = Record(
        request_id, Endpoint.RESPONSES, body.model, body.stream, started=started, principal=principal,
        user=body.user, batch=batch,
    )  # fmt: skip
    args = (request_id, Endpoint.CHAT, headers, chat_json, chat, principal, record, started)
    return Run(services.flow, services.stalls, args, lambda inner: ResponsesClient(inner, body, record, keeper))


async def compact(request: HttpRequest) -> Response | ASGIApp:
    """POST /v1/responses/compact: the body validated (`margin.protocol.CompactRequest`), then the request path
    as for any call (auth, admission, budgets, one ledger row), the upstream's compacted response as it came."""
    return await handle(request, Endpoint.COMPACT)


async def input_tokens(request: HttpRequest) -> Response:
    """POST /v1/responses/input_tokens: the input tokens of a Responses request (the openai SDK's
    `client.responses.input_tokens.count`), counted as `/v1/messages/count_tokens` counts (margin.api.counting):
    the body validated and translated as `/v1/responses` does, a `previous_response_id`'s stored turns first."""
    storing = request.app.state.services.settings.responses.store
    arrived = await arrive(request, lambda data: (data, parse(data, storing)))
    if isinstance(arrived, Response):
        return arrived
    arrival, (data, parsed) = arrived
    try:
        body, chat_json, chat = await _whole(arrival.services, arrival.principal, data, parsed)
    except MarginError as exc:  # an unknown `previous_response_id`: a count's outcome, as the count's own errors
        return refused(arrival, exc, error_body)  # no model resolved yet: the label is never the caller's text
    return await answer(arrival, Count(body.model, chat_json, chat, _input_tokens, error_body))


def _input_tokens(count: int) -> dict[str, Any]:
    return {"object": "response.input_tokens", "input_tokens": count}


async def _whole(services: Any, principal: Principal | None, data: dict[str, Any], parsed: Parsed) -> Parsed:
    """The request as parsed, or with a `previous_response_id` the stored turns first, parsed again: the prompt
    (and its budget) is all of it."""
    body = parsed[0]
    if body.previous_response_id is None:
        return parsed
    prior = await continued(services, principal, body.previous_response_id)
    return parse(expand(data, prior), services.settings.responses.store)
