"""`/v1/files` and `/v1/batches`: OpenAI's Batch API (the `openai` SDK works unchanged). Every route
authenticates from the headers first; a key sees only its own files and jobs (another's id answers 404)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from margin.api.admin import endpoint, page_of
from margin.api.edge import read_json
from margin.api.errors import NOSNIFF
from margin.batches import expiry, jsonl, store
from margin.batches.objects import batch_object, file_object
from margin.errors import InvalidRequest, NotFound
from margin.pipeline.steps.auth import parse_tag_header
from margin.types import Principal, Usage

FILES_PAGE = 10_000  # OpenAI's most files a page, and its default
Releaser = Callable[[Any, Any, Any], Awaitable[Any]]  # an async context manager's __aexit__


class ExpiresAfter(BaseModel):
    """OpenAI's expiry policy of a file: `seconds` after its creation (margin.batches.expiry)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # strict: no bool, float or "3600" for seconds

    anchor: Literal["created_at"]
    seconds: int = Field(ge=expiry.MIN_S, le=expiry.MAX_S)


class BatchCreateRequest(BaseModel):
    """POST /v1/batches (OpenAI's fields; others are ignored)."""

    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"]
    completion_window: str = Field(
        pattern=r"^[0-9]{1,3}h$", description="Hours before the job expires (`24h`; up to batches.max_window_h)."
    )
    metadata: dict[str, str] | None = Field(None, max_length=16)
    output_expires_after: ExpiresAfter | None = Field(
        None, description="When its output and error files expire: seconds (1 hour to 30 days) after each is written."
    )


def _owner(principal: Principal) -> store.Owner:
    return store.Owner(principal.key_id, principal.org, principal.team)


def _services(request: Request) -> Any:
    services = request.app.state.services
    if not services.settings.batches.enabled:
        raise NotFound("the Batch API is disabled on this gateway (batches.enabled)", code="unknown_url")
    return services


def page_window(request: Request, default: int, most: int, orderable: bool = False) -> store.Window:
    """`limit` (1 to `most`), `after`, and for files `order` (`desc`, newest first, or `asc`), as OpenAI's lists."""
    raw = request.query_params.get("limit", str(default))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and 1 <= int(raw) <= most):  # not "²", nor 5,000 digits
        raise InvalidRequest(f"limit must be an integer from 1 to {most:,}", param="limit")
    order = request.query_params.get("order", "desc") if orderable else "desc"
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be asc or desc", param="order")
    return store.Window(int(raw), request.query_params.get("after") or None, order == "asc")


async def upload_file(request: Request, principal: Principal) -> Any:
    """Store an upload: its body is read only in one of the key's upload places (`Services.uploads`; 429 past
    them), as each holds up to `batches.max_file_bytes` until it is stored."""
    services = _services(request)
    async with services.uploads.slot(principal.key_id):  # open mode (no key): the operator's own, no gate
        return await _store_upload(request, services, principal)


async def _store_upload(request: Request, services: Any, principal: Principal) -> Any:
    config = services.settings.batches
    upload = await jsonl.read_upload(request, config)
    lines = await services.read(jsonl.check_content, upload.content, config)  # scans up to max_file_bytes
    expires_s = upload.expires_s if upload.expires_s is not None else config.upload_expires_after_s or None
    row = await store.add_file(
        services.engine,
        _owner(principal),
        upload.filename,
        upload.content,
        lines,
        config.max_stored_bytes_per_key,
        datetime.now(UTC),
        expires_s,
    )
    return file_object(row)


async def list_files(request: Request, principal: Principal) -> Any:
    """OpenAI's file list: up to 10,000 a page (its default too), newest first or `order=asc`, `purpose=` only."""
    window = page_window(request, FILES_PAGE, FILES_PAGE, orderable=True)
    purpose = request.query_params.get("purpose") or None
    engine = _services(request).engine
    rows, more = await store.list_files(engine, _owner(principal), window, datetime.now(UTC), purpose)
    return page_of([file_object(row) for row in rows], more)


async def get_file(request: Request, principal: Principal) -> Any:
    engine = _services(request).engine
    row = await store.get_file(engine, request.path_params["file_id"], _owner(principal), datetime.now(UTC))
    return file_object(row)


class HeldResponse(StreamingResponse):
    """A streamed answer that holds a place until it has ended, however it ends (sent, client gone, error)."""

    def __init__(self, chunks: AsyncIterator[bytes], headers: dict[str, str], release: Releaser) -> None:
        super().__init__(chunks, media_type="application/octet-stream", headers=headers)
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.release(None, None, None)


async def file_content(request: Request, principal: Principal) -> Any:
    """The file's bytes, streamed part by part (an output file may be as large as all its answers), at most two
    downloads of one key at a time (`Services.downloads`; 429 past them)."""
    services = _services(request)
    file_id, engine = request.path_params["file_id"], services.engine
    row = await store.get_file(engine, file_id, _owner(principal), datetime.now(UTC))  # 404 unless the caller's
    headers = {"content-length": str(row.bytes), NOSNIFF[0]: NOSNIFF[1]}
    place = services.downloads.slot(principal.key_id)  # open mode (no key): the operator's own, no gate
    await place.__aenter__()
    return HeldResponse(store.file_chunks(engine, file_id), headers, place.__aexit__)


async def delete_file(request: Request, principal: Principal) -> Any:
    file_id = request.path_params["file_id"]
    await store.delete_file(_services(request).engine, file_id, _owner(principal), datetime.now(UTC))
    return {"id": file_id, "object": "file", "deleted": True}


def _tags(request: Request, services: Any, principal: Principal) -> dict[str, str]:
    """x-margin-tags of the create request, checked now and sent with every line."""
    bound = principal.tags or {}
    allowed = set(services.settings.tags.header_keys) | {k for k, v in bound.items() if v == "*"}
    header = request.headers.get("x-margin-tags")
    tags = parse_tag_header(header, allowed) if header else {}
    missing = [name for name, value in bound.items() if value == "*" and name not in tags]
    if missing:
        raise InvalidRequest(
            f"this key must name its {', '.join(missing)} in x-margin-tags", param="x-margin-tags", code="missing_tag"
        )
    return tags


async def create_batch(request: Request, principal: Principal) -> Any:
    services = _services(request)
    tags = _tags(request, services, principal)
    try:
        spec = BatchCreateRequest.model_validate(await read_json(request))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"{field}: {first['msg']}", param=field) from exc
    hours = int(spec.completion_window[:-1])
    limit = services.settings.batches.max_window_h
    if not 1 <= hours <= limit:
        raise InvalidRequest(f"completion_window must be 1h to {limit}h", param="completion_window")
    for key, value in (spec.metadata or {}).items():
        if len(key) > 64 or len(value) > 512:
            raise InvalidRequest("metadata keys are at most 64 characters, values 512", param="metadata")
    output_expires_s = None if spec.output_expires_after is None else spec.output_expires_after.seconds
    row = await store.add_batch(
        services.engine,
        _owner(principal),
        spec.input_file_id,
        spec.endpoint,
        (spec.completion_window, hours),
        spec.metadata,
        tags,
        datetime.now(UTC),
        services.settings.batches,
        output_expires_s,
    )
    runner = getattr(request.app.state, "batch_runner", None)
    if runner is not None:
        runner.wake.set()
    return batch_object(row, Usage())  # no line has run yet


async def list_batches(request: Request, principal: Principal) -> Any:
    window = page_window(request, 20, 100)  # OpenAI's: 20 by default, at most 100
    engine = _services(request).engine
    rows, more = await store.list_batches(engine, _owner(principal), window)
    used = await store.usage(engine, rows)
    return page_of([batch_object(row, used[row.id]) for row in rows], more)


async def get_batch(request: Request, principal: Principal) -> Any:
    services = _services(request)
    row = await store.get_batch(services.engine, request.path_params["batch_id"], _owner(principal))
    used = (await store.usage(services.engine, [row]))[row.id]
    return batch_object(row, used, await store.line_counts(services.engine, row))


async def cancel_batch(request: Request, principal: Principal) -> Any:
    services = _services(request)
    row = await store.cancel(services.engine, request.path_params["batch_id"], _owner(principal), datetime.now(UTC))
    runner = getattr(request.app.state, "batch_runner", None)
    if runner is not None:
        runner.wake.set()
    return batch_object(row, (await store.usage(services.engine, [row]))[row.id])


def routes() -> list[Route]:
    def open_to_keys(handler: Any) -> Any:
        return endpoint(handler, admin=False)

    return [
        Route("/v1/files", open_to_keys(upload_file), methods=["POST"]),
        Route("/v1/files", open_to_keys(list_files), methods=["GET"]),
        Route("/v1/files/{file_id}", open_to_keys(get_file), methods=["GET"]),
        Route("/v1/files/{file_id}", open_to_keys(delete_file), methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", open_to_keys(file_content), methods=["GET"]),
        Route("/v1/batches", open_to_keys(create_batch), methods=["POST"]),
        Route("/v1/batches", open_to_keys(list_batches), methods=["GET"]),
        Route("/v1/batches/{batch_id}", open_to_keys(get_batch), methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", open_to_keys(cancel_batch), methods=["POST"]),
    ]
