"""POST /v1/chat/completions, /v1/completions, /v1/embeddings: the caller from the headers, the body read
with a limit and validated, then the request path (`margin.pipeline.flow`), which writes the answer."""

from __future__ import annotations

import time

from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from margin.api.client import AsgiClient, StallWatch
from margin.api.edge import header_map, parse_json, read_body
from margin.api.errors import error_response
from margin.batches import inprocess
from margin.errors import MarginError
from margin.keys import authenticate
from margin.ledger.ids import request_id as new_request_id
from margin.pipeline.flow import Flow
from margin.pipeline.values import Record, Request
from margin.protocol import Endpoint, parse_request


class Run:
    """The ASGI app of one request that passed the edge: the flow, writing through this connection's `send`."""

    __slots__ = ("args", "flow", "stalls")

    def __init__(self, flow: Flow, stalls: StallWatch, args: tuple[object, ...]) -> None:
        self.flow, self.stalls, self.args = flow, stalls, args

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = AsgiClient(send, self.stalls)
        request_id, endpoint, headers, data, body, principal, record, started = self.args
        try:
            await self.flow(
                Request(request_id, endpoint, headers, data, body, principal, client, record, started)  # type: ignore[arg-type]
            )
        finally:
            client.close()


async def handle(request: HttpRequest, endpoint: Endpoint) -> Response | ASGIApp:
    started = time.perf_counter()
    services = request.app.state.services
    caller = inprocess.of(request.scope)  # the batch worker's in-process call: already authenticated
    # time-ordered (UUIDv7): the ledger's unique index grows at its edge; a batch line's id is deterministic
    request_id = caller.request_id if caller else new_request_id()
    headers = header_map(request.scope["headers"])
    try:
        # from headers, before any body
        principal = caller.principal if caller else await authenticate(services.keys, headers)
        data = parse_json(await read_body(request, services.settings.server.max_body_bytes))
        body = parse_request(endpoint, data)
    except MarginError as exc:
        return error_response(exc, request_id)
    stream = endpoint is not Endpoint.EMBEDDINGS and bool(getattr(body, "stream", False))
    user = getattr(body, "user", None)
    user = user if isinstance(user, str) else None
    batch = caller.batch if caller else None
    record = Record(
        request_id, endpoint, body.model, stream, started=started, principal=principal, user=user, batch=batch
    )
    return Run(services.flow, services.stalls, (request_id, endpoint, headers, data, body, principal, record, started))


async def chat_completions(request: HttpRequest) -> Response | ASGIApp:
    return await handle(request, Endpoint.CHAT)


async def completions(request: HttpRequest) -> Response | ASGIApp:
    return await handle(request, Endpoint.COMPLETIONS)


async def embeddings(request: HttpRequest) -> Response | ASGIApp:
    return await handle(request, Endpoint.EMBEDDINGS)
