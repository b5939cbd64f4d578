"""POST /v1/chat/completions, /v1/completions, /v1/embeddings."""

from __future__ import annotations

import time
import uuid

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from margin.api import inprocess
from margin.api.edge import parse_json, read_body
from margin.api.responses import JSON, SSEResponse, error_response, margin_headers
from margin.errors import MarginError
from margin.pipeline.call import MeteredStream
from margin.pipeline.context import RequestContext
from margin.pipeline.stages.auth import authenticate
from margin.protocol import Endpoint, parse_request


async def handle(request: Request, endpoint: Endpoint) -> Response | ASGIApp:
    started = time.perf_counter()
    services = request.app.state.services
    caller = inprocess.of(request.scope)  # the batch worker's in-process call: already authenticated
    request_id = caller.request_id if caller else uuid.uuid4().hex
    try:
        # from headers, before any body
        principal = caller.principal if caller else await authenticate(services.keys, request.headers)
        data = parse_json(await read_body(request, services.settings.server.max_body_bytes))
        api_request = parse_request(endpoint, data)
        ctx = RequestContext(request_id, endpoint, request.headers, data, api_request, started=started)
        ctx.principal = principal
        ctx.batch = caller.batch if caller else None
        await services.pipeline.run(ctx)
    except MarginError as exc:
        return error_response(exc, request_id)
    if isinstance(ctx.stream, MeteredStream):
        return SSEResponse(ctx, ctx.stream, services)
    assert ctx.completion is not None
    content = ctx.completion.raw if ctx.completion.raw is not None else orjson.dumps(ctx.completion.payload)
    return Response(content, media_type=JSON, headers=margin_headers(ctx))


async def chat_completions(request: Request) -> Response | ASGIApp:
    return await handle(request, Endpoint.CHAT)


async def completions(request: Request) -> Response | ASGIApp:
    return await handle(request, Endpoint.COMPLETIONS)


async def embeddings(request: Request) -> Response | ASGIApp:
    return await handle(request, Endpoint.EMBEDDINGS)
