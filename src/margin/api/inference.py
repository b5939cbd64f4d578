"""POST /v1/chat/completions, /v1/completions, /v1/embeddings: the caller from the headers, the body read
with a limit and validated, then the request path (`margin.pipeline.flow`), which writes the answer.
`arrive` and `Run` serve `/v1/responses` and `/v1/messages` too (margin.api.responses, margin.api.messages: their
bodies and answers translated)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from margin.api.client import AsgiClient, StallWatch
from margin.api.edge import header_map, parse_json, read_body
from margin.api.errors import error_body, error_response, unspent_headers
from margin.batches import inprocess
from margin.errors import MarginError
from margin.keycache import authenticate
from margin.ledger.ids import request_id as new_request_id
from margin.parsing import parse_request
from margin.pipeline.flow import Flow
from margin.pipeline.values import Client, Record, Request
from margin.protocol import Endpoint
from margin.types import BatchLine, Principal

T = TypeVar("T")


class Run:
    """The ASGI app of one request that passed the edge: the flow, writing through this connection's `send`
    (through `wrap`'s client where the answer is translated: the Responses API)."""

    __slots__ = ("args", "flow", "stalls", "wrap")

    def __init__(
        self, flow: Flow, stalls: StallWatch, args: tuple[object, ...], wrap: Callable[[AsgiClient], Client] | None
    ) -> None:
        self.flow, self.stalls, self.args, self.wrap = flow, stalls, args, wrap

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        inner = AsgiClient(send, self.stalls)
        client = inner if self.wrap is None else self.wrap(inner)
        request_id, endpoint, headers, data, body, principal, record, started = self.args
        try:
            await self.flow(
                Request(request_id, endpoint, headers, data, body, principal, client, record, started)  # type: ignore[arg-type]
            )
        finally:
            inner.close()
            caller = inprocess.of(scope)
            if caller is not None and inner.refused is not None:  # the batch worker reads it (Reply.refused)
                caller.refusals.append(inner.refused)


class Arrival(NamedTuple):
    """A request that passed the edge: who sent it, with what id and headers."""

    started: float
    services: Any  # margin.services.Services (the app's)
    request_id: str
    headers: dict[str, str]
    principal: Principal | None
    batch: BatchLine | None


async def arrive(
    request: HttpRequest,
    parse: Callable[[Any], T],
    body_of: Callable[[MarginError], dict[str, Any]] = error_body,
    x_api_key: bool = False,
) -> tuple[Arrival, T] | Response:
    """The caller (from headers, before any body), then the body read with a limit and `parse`d; the error
    answer if either fails (`body_of`: its JSON, in the endpoint's shape; `x_api_key`: the key may come in
    that header, as Anthropic's SDKs send it)."""
    started = time.perf_counter()
    services = request.app.state.services
    caller = inprocess.of(request.scope)  # the batch worker's in-process call: already authenticated
    # time-ordered (UUIDv7): the ledger's unique index grows at its edge; a batch line's id is deterministic
    request_id = caller.request_id if caller else new_request_id()
    headers = header_map(request.scope["headers"])
    try:
        principal = caller.principal if caller else await authenticate(services.keys, headers, x_api_key)
        parsed = parse(parse_json(await read_body(request, services.settings.server.max_body_bytes, headers)))
    except MarginError as exc:
        return unmetered_error(exc, request_id, started, body_of)
    return Arrival(started, services, request_id, headers, principal, caller.batch if caller else None), parsed


def unmetered_error(
    error: MarginError, request_id: str, started: float, body_of: Callable[[MarginError], dict[str, Any]] = error_body
) -> Response:
    """The answer to a request refused before the request path (a bad key, a body that does not parse): no
    ledger row and nothing spent, with the headers every answer carries (its cost, 0, and margin's time);
    counted in `margin_rejections_total` when sent (`margin.api.errors.Refusal`)."""
    response = error_response(error, body_of=body_of)
    response.headers.update(unspent_headers(request_id, started))
    return response


async def handle(request: HttpRequest, endpoint: Endpoint) -> Response | ASGIApp:
    arrived = await arrive(request, lambda data: (data, parse_request(endpoint, data)))
    if isinstance(arrived, Response):
        return arrived
    (started, services, request_id, headers, principal, batch), (data, body) = arrived
    stream = endpoint is not Endpoint.EMBEDDINGS and bool(getattr(body, "stream", False))
    user = getattr(body, "user", None)
    user = user if isinstance(user, str) else None
    record = Record(
        request_id, endpoint, body.model, stream, started=started, principal=principal, user=user, batch=batch
    )
    args = (request_id, endpoint, headers, data, body, principal, record, started)
    return Run(services.flow, services.stalls, args, None)


async def chat_completions(request: HttpRequest) -> Response | ASGIApp:
    return await handle(request, Endpoint.CHAT)


async def completions(request: HttpRequest) -> Response | ASGIApp:
    return await handle(request, Endpoint.COMPLETIONS)


async def embeddings(request: HttpRequest) -> Response | ASGIApp:
    return await handle(request, Endpoint.EMBEDDINGS)
