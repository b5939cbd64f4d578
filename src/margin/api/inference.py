"""POST /v1/chat/completions, /v1/completions, /v1/embeddings."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from margin.api.responses import JSON, SSEResponse, error_response, margin_headers
from margin.errors import InvalidRequest, MarginError, PayloadTooLarge
from margin.pipeline.call import MeteredStream
from margin.pipeline.context import RequestContext
from margin.protocol import Endpoint, parse_request


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit} bytes")
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        parts.append(part)
    return b"".join(parts)


def parse_json(body: bytes) -> Any:
    if not body:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc


async def handle(request: Request, endpoint: Endpoint) -> Response | ASGIApp:
    started = time.perf_counter()
    services = request.app.state.services
    request_id = uuid.uuid4().hex
    try:
        body = await read_body(request, services.settings.server.max_body_bytes)
        data = parse_json(body)
        api_request = parse_request(endpoint, data)
        ctx = RequestContext(request_id, endpoint, request.headers, data, api_request, started=started)
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
