"""The gateway's edge: what is decided from the request line and headers alone, before any body is read.

- Open mode (the gateway started with no API keys) answers only requests addressed to a loopback host and,
  when a browser sends an Origin, only same-origin ones: no web page can drive a local gateway and DNS
  rebinding cannot read it.
- Every request that carries a body (POST, PUT, PATCH) declares `Content-Type: application/json`: browsers
  send `text/plain` and form posts cross-site without asking, never JSON. The dashboard's two HTML form posts
  are the exception; they check their Origin instead (`margin.dashboard.auth.same_origin`). `POST /v1/files`
  also takes `multipart/form-data` (the OpenAI SDK uploads that way); it authenticates from the headers with
  a Bearer key (never a cookie, so a cross-site form cannot use a browser's session) before reading the body.
- One body reader with a limit for every route: a declared Content-Length over the limit is refused before
  reading, a chunked body is counted as it arrives and refused as soon as it passes the limit.
- One JSON parser for every route's body (`parse_json`): a body nested deeper than `jsonload.MAX_DEPTH` levels
  is refused (400) before it is validated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.types import Scope

from margin import jsonload
from margin.config import is_loopback
from margin.errors import InvalidRequest, MarginError, PayloadTooLarge, PermissionDenied, UnsupportedMediaType

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
FORM_PATHS = frozenset({"/dashboard/login", "/dashboard/logout"})  # HTML forms; same-origin checked there
MULTIPART_PATHS = frozenset({"/v1/files"})  # file uploads (multipart/form-data), as the OpenAI SDK sends them
UPLOAD_MEDIA_TYPE = "an upload needs `Content-Type: multipart/form-data`: the file in a `file` field, `purpose=batch`"


def host_name(host: str) -> str:
    """The name part of a Host header: `127.0.0.1:8000` → `127.0.0.1`, `[::1]:8000` → `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else ""
    return host.partition(":")[0]


def loopback_host(host: str | None) -> bool:
    return host is not None and is_loopback(host_name(host))


def same_origin(origin: str | None, host: str | None) -> bool:
    """No Origin (not a browser, or a same-origin GET) is fine; `null` and any other site are not."""
    if origin is None:
        return True
    if host is None or origin == "null":
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()


def is_json(content_type: str | None) -> bool:
    return content_type is not None and content_type.partition(";")[0].strip().lower() == "application/json"


def is_multipart(content_type: str | None) -> bool:
    return content_type is not None and content_type.partition(";")[0].strip().lower() == "multipart/form-data"


def refusal(scope: Scope, open_mode: bool) -> MarginError | None:
    """Why this request is refused before it reaches a route, or None. Headers only; one pass over them."""
    needs_json = scope["method"] in BODY_METHODS and scope["path"] not in FORM_PATHS
    if not (open_mode or needs_json):
        return None
    host = origin = content_type = None
    for name, value in scope["headers"]:
        if name == b"host":
            host = value.decode("latin-1")
        elif name == b"origin":
            origin = value.decode("latin-1")
        elif name == b"content-type":
            content_type = value.decode("latin-1")
    if open_mode and not loopback_host(host):
        return PermissionDenied(
            "this gateway runs open (no API keys) and answers only requests addressed to a loopback host "
            "(localhost, 127.0.0.1, ::1); create a key to serve other names",
            code="loopback_only",
        )
    if open_mode and not same_origin(origin, host):
        return PermissionDenied(
            "this gateway runs open (no API keys) and answers browsers only from its own origin",
            code="cross_origin",
        )
    if needs_json and not is_json(content_type):
        if scope["path"] in MULTIPART_PATHS and scope["method"] == "POST":  # it told an upload to send JSON
            return None if is_multipart(content_type) else UnsupportedMediaType(UPLOAD_MEDIA_TYPE)
        return UnsupportedMediaType(f"{scope['method']} needs `Content-Type: application/json`")
    return None


def header_map(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request's headers as a plain dict, read once (names arrive lowercased, as ASGI requires): a repeated
    header keeps its first value, like starlette's `Headers.get`. A lookup is then one dict probe, not a scan
    of the list with an exception for each header that is absent."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(raw)}


async def read_body(request: Request, limit: int, headers: Mapping[str, str] | None = None) -> bytes:
    """The whole body, never more than `limit` bytes held (413 beyond it, before reading the rest). `headers`:
    the request's as `header_map` read them, where the caller has them (starlette's `Headers` not built again)."""
    declared = (request.headers if headers is None else headers).get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit} bytes")
    parts, size, receive = [], 0, request.receive
    while True:  # the ASGI messages themselves (starlette's `stream()` is a generator around this loop)
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        parts.append(part)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


def parse_json(body: bytes, *, exact: bool = False) -> Any:
    """The body as JSON; `exact`: its numbers with a fraction or exponent as `Decimal` (`jsonload.exact`)."""
    if not body:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        value = jsonload.loads(body)
        return jsonload.exact(body) if exact else value
    except jsonload.TooDeep as exc:  # before validation, the backend or the ledger: margin could not write it back
        raise InvalidRequest(
            f"the request body nests deeper than {exc.limit} levels of arrays and objects, the limit",
            code="too_deeply_nested",
        ) from exc
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc


async def read_json(request: Request, *, exact: bool = False) -> Any:
    """The body of an API request as JSON, bounded by `server.max_body_bytes` (`exact`: see `parse_json`)."""
    body = await read_body(request, request.app.state.services.settings.server.max_body_bytes)
    return parse_json(body, exact=exact)


def known_query(params: Mapping[str, str], allowed: frozenset[str]) -> None:
    """A read's query string holds only the parameters it reads, each once (400 naming the first that is not):
    a misspelt filter (`?sinse=7d`) or a second value (`?by=model&by=team`) was ignored, and the answer covered
    more, or other, than asked."""
    for name in params:
        if name not in allowed:
            raise InvalidRequest(f"unknown query parameter {name[:40]!r}", param=name[:40])
        if isinstance(params, QueryParams) and len(params.getlist(name)) > 1:  # the CLI's are a dict
            raise InvalidRequest(f"{name}: given more than once", param=name)
