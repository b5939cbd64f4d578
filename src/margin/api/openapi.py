"""`GET /openapi.json`: an OpenAPI 3.1 document of every public route, generated from the pydantic models the
routes validate with (`margin.protocol`, `margin.keys.KeyRequest`, `margin.keyops.RotateRequest`,
`margin.ledger.feedback.FeedbackItem`, the governance specs), so the contract cannot drift from the code. Built
once per app; served as bytes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response

from margin import __version__
from margin.api.batches import BatchCreateRequest
from margin.api.errors import JSON, NOSNIFF
from margin.keyops import RotateRequest
from margin.keys import KeyRequest
from margin.ledger.feedback import FeedbackItem
from margin.messages import CountTokensRequest, MessagesRequest
from margin.protocol import ChatCompletionRequest, CompactRequest, CompletionRequest, EmbeddingRequest
from margin.responses import ResponsesRequest
from margin.specs import BudgetSpec, FlagSpec, LimitSpec

REF = "#/components/schemas/{model}"
DASHBOARD_PAGES = ("overview", "breakdown", "latency", "savings", "budgets", "backends", "margin")


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer (OpenAI's error shape; `margin.api.errors.error_body`)."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


class AnthropicErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    message: str


class AnthropicErrorBody(BaseModel):
    """Every 4xx and 5xx answer under `/v1/messages` (Anthropic's error shape; `margin.api.errors`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["error"]
    error: AnthropicErrorDetail


MODELS: tuple[type[BaseModel], ...] = (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponsesRequest,
    CompactRequest,
    MessagesRequest,
    CountTokensRequest,
    KeyRequest,
    RotateRequest,
    FeedbackItem,
    BudgetSpec,
    LimitSpec,
    FlagSpec,
    ErrorBody,
    AnthropicErrorBody,
    BatchCreateRequest,
)
UPLOAD = {
    "type": "object",
    "required": ["file", "purpose"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "JSONL, one request a line"},
        "purpose": {"type": "string", "enum": ["batch"]},
    },
}


def ref(model: type[BaseModel] | str) -> dict[str, str]:
    return {"$ref": REF.format(model=model if isinstance(model, str) else model.__name__)}


def _query(*names: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}} for name in names]


def _path(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string", "minLength": 1}}


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    summary: str
    body: dict[str, Any] | None = None  # a JSON schema (usually a $ref)
    status: int = 200
    auth: str = "key"  # key | admin | none | optional | key_or_api_key
    params: list[dict[str, Any]] = field(default_factory=list)
    stream: bool = False
    body_required: bool = True
    media: str = JSON  # the request body's media type
    answer: str = JSON  # the success answer's media type
    error: type[BaseModel] = ErrorBody  # the error answers' shape


def _operations() -> list[Op]:
    return [*_gateway_operations(), *_batch_operations(), *_store_operations()]


def _gateway_operations() -> list[Op]:
    """Inference, the caller's own feedback and usage, health, keys, backends, metrics, the dashboard's data."""
    list_of = {"oneOf": [ref(FeedbackItem), {"type": "array", "items": ref(FeedbackItem), "minItems": 1}]}
    window = _query("since", "until", "by", "limit")  # limit: groups listed (1-10,000; default 1,000)
    return [
        Op(
            "post",
            "/v1/chat/completions",
            "Chat completion (streams with `stream: true`)",
            ref(ChatCompletionRequest),
            stream=True,
        ),
        Op("post", "/v1/completions", "Text completion", ref(CompletionRequest), stream=True),
        Op("post", "/v1/embeddings", "Embeddings", ref(EmbeddingRequest)),
        Op(
            "post",
            "/v1/responses",
            "A response (OpenAI's Responses API: answered by a chat; streams with `stream: true`; stored when "
            "`responses.store` is on)",
            ref(ResponsesRequest),
            stream=True,
        ),
        Op(
            "post",
            "/v1/responses/input_tokens",
            'The input tokens of a Responses request (`{"object": "response.input_tokens", "input_tokens": N}`), '
            "for models on an anthropic or llamacpp backend; no ledger row",
            ref(ResponsesRequest),
        ),
        Op(
            "post",
            "/v1/responses/compact",
            "A compacted conversation, passed through to an `openai` backend with `responses_compact` on (a 400 "
            "naming `model` for any other)",
            ref(CompactRequest),
        ),
        Op(
            "get",
            "/v1/responses/{response_id}",
            "A stored response (its key's or org's)",
            params=[_path("response_id")],
        ),
        Op("delete", "/v1/responses/{response_id}", "Delete a stored response", params=[_path("response_id")]),
        Op(
            "get",
            "/v1/responses/{response_id}/input_items",
            "A stored response's input items, newest first (order=asc: oldest first)",
            params=[_path("response_id"), *_query("limit", "after", "order")],
        ),
        Op(
            "post",
            "/v1/responses/{response_id}/cancel",
            "Cancel a background response: margin runs none, so a stored response is a 400 (else a 404)",
            {"type": "object"},
            params=[_path("response_id")],
            body_required=False,
        ),
        Op(
            "post",
            "/v1/messages",
            "A message (Anthropic's Messages API: answered by a chat; streams with `stream: true`; the key in "
            "`x-api-key` or as a Bearer; errors in Anthropic's shape)",
            ref(MessagesRequest),
            stream=True,
            auth="key_or_api_key",
            error=AnthropicErrorBody,
        ),
        Op(
            "post",
            "/v1/messages/count_tokens",
            'The token count of a Messages prompt (`{"input_tokens": N}`), for models on an anthropic backend '
            "(Anthropic's count) or a llamacpp backend (margin's, exact); no ledger row",
            ref(CountTokensRequest),
            auth="key_or_api_key",
            error=AnthropicErrorBody,
        ),
        Op("get", "/v1/models", "The models this gateway serves"),
        Op("get", "/v1/models/{model}", "One model", params=[_path("model")]),
        Op("post", "/v1/margin/feedback", "Outcomes of earlier requests (all or nothing)", list_of),
        Op("get", "/v1/margin/usage", "The calling key's own usage and budgets", params=[*window, *_query("user")]),
        Op("get", "/healthz", "Liveness (details for an admin key only)", auth="optional"),
        Op("get", "/readyz", "Readiness: 200 once every backend has loaded, else 503", auth="none"),
        Op("get", "/openapi.json", "This document", auth="none"),
        Op(
            "get",
            "/admin/keys",
            "List keys in the order of their ids, a page at a time (never the keys themselves)",
            auth="admin",
            params=_query("limit", "after"),
        ),
        Op("post", "/admin/keys", "Create a key (shown once)", ref(KeyRequest), status=201, auth="admin"),
        Op(
            "delete",
            "/admin/keys/{key_id}",
            "Revoke a key (never the last admin key)",
            auth="admin",
            params=[_path("key_id")],
        ),
        Op(
            "post",
            "/admin/keys/{key_id}/rotate",
            "A new secret for a key, same id (shown once); the old one works for `grace_s`",
            ref(RotateRequest),
            auth="admin",
            params=[_path("key_id")],
            body_required=False,
        ),
        Op("get", "/admin/usage", "Usage of every key", auth="admin", params=window),
        Op(
            "get",
            "/admin/audit",
            "The audit log of admin changes, newest first (`next_cursor` pages on)",
            auth="admin",
            params=_query("action", "actor", "target", "since", "until", "cursor", "limit"),
        ),
        Op("get", "/admin/backends", "Each backend's circuit, recent errors, latency and limits", auth="admin"),
        Op("get", "/metrics", "Prometheus metrics (text exposition format)", auth="admin", answer="text/plain"),
        Op(
            "post",
            "/admin/reload",
            "Re-read rules (and the config file)",
            {"type": "object"},
            auth="admin",
            body_required=False,
        ),
        Op(
            "get",
            "/dashboard/api/{page}",
            "A dashboard page's data",
            params=[_path("page", {"type": "string", "enum": list(DASHBOARD_PAGES)}), *_query("since", "by")],
        ),
    ]


def _batch_operations() -> list[Op]:
    """The Files and Batch APIs (OpenAI's shapes)."""
    page = _query("limit", "after")
    return [
        Op("post", "/v1/files", "Upload a batch input file (JSONL)", UPLOAD, media="multipart/form-data"),
        Op(
            "get",
            "/v1/files",
            "The calling key's files, newest first (order=asc: oldest first; purpose: only those)",
            params=_query("limit", "after", "order", "purpose"),
        ),
        Op("get", "/v1/files/{file_id}", "One file", params=[_path("file_id")]),
        Op("delete", "/v1/files/{file_id}", "Delete a file", params=[_path("file_id")]),
        Op(
            "get",
            "/v1/files/{file_id}/content",
            "A file's bytes",
            params=[_path("file_id")],
            answer="application/octet-stream",
        ),
        Op("post", "/v1/batches", "Create a batch job from an uploaded file", ref(BatchCreateRequest)),
        Op("get", "/v1/batches", "The calling key's batch jobs, newest first", params=page),
        Op("get", "/v1/batches/{batch_id}", "One batch job", params=[_path("batch_id")]),
        Op(
            "post",
            "/v1/batches/{batch_id}/cancel",
            "Cancel a batch job",
            {"type": "object"},
            params=[_path("batch_id")],
            body_required=False,
        ),
    ]


def _store_operations() -> list[Op]:
    """The admin API's stored budgets, limits and flags: the same four operations each."""
    ops: list[Op] = []
    for plural, spec in (("budgets", BudgetSpec), ("limits", LimitSpec), ("flags", FlagSpec)):
        ops += [
            Op("get", f"/admin/{plural}", f"List {plural}", auth="admin"),
            Op("put", f"/admin/{plural}", f"Create or replace one of the {plural}", ref(spec), auth="admin"),
            Op("post", f"/admin/{plural}", f"Create or replace one of the {plural}", ref(spec), auth="admin"),
            Op(
                "delete",
                f"/admin/{plural}/{{name}}",
                f"Delete a stored one of the {plural}",
                auth="admin",
                params=[_path("name")],
            ),
        ]
    return ops


def _operation(op: Op) -> dict[str, Any]:
    shape = "Anthropic-shaped error" if op.error is AnthropicErrorBody else "OpenAI-shaped error"
    error = {"description": shape, "content": {JSON: {"schema": ref(op.error)}}}
    success: dict[str, Any] = {op.answer: {"schema": {} if op.answer == JSON else {"type": "string"}}}
    if op.stream:
        success["text/event-stream"] = {"schema": {"type": "string"}}
    out: dict[str, Any] = {
        "summary": op.summary,
        "operationId": f"{op.method}_{op.path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
        "responses": {str(op.status): {"description": "OK", "content": success}, "4XX": error, "5XX": error},
    }
    if op.params:
        out["parameters"] = op.params
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required, "content": {op.media: {"schema": op.body}}}
    if op.auth == "none":
        out["security"] = []
    elif op.auth == "optional":
        out["security"] = [{}, {"bearer": []}]
    elif op.auth == "key_or_api_key":
        out["security"] = [{"bearer": []}, {"api_key": []}]
    return out


def document() -> dict[str, Any]:
    _, definitions = models_json_schema([(model, "validation") for model in MODELS], ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in _operations():
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "margin",
            "version": __version__,
            "description": "OpenAI-compatible inference gateway with unit economics. Bodies are JSON "
            "(`Content-Type: application/json`); with keys, send `Authorization: Bearer <key>`.",
        },
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "api_key": {"type": "apiKey", "in": "header", "name": "x-api-key"},  # `/v1/messages` only
            },
        },
        "security": [{"bearer": []}],
    }


def endpoint() -> Callable[[Request], Awaitable[Response]]:
    body = orjson.dumps(document())

    async def openapi_json(request: Request) -> Response:
        return Response(body, media_type=JSON, headers={"cache-control": "no-cache", NOSNIFF[0]: NOSNIFF[1]})

    return openapi_json
