"""The one place where margin's errors become HTTP: each error class's status and OpenAI error type, the
OpenAI-shaped JSON body, and the error response; and the headers every JSON answer of margin's own app carries
(errors, admin, models, health, dashboard API).

An error answer made here is a request margin refused itself, with no ledger row (a request that reaches the
request path answers through its client, `margin.api.client`, and is counted from its row): when it is sent it
adds one to `margin_rejections_total{reason=<its code>}` (`Refusal`). `Stamped` gives every answer that has no
request id of its own the headers every answer carries (`unspent_headers`): the gateway wraps `send` with it
for everything but the inference routes, which set their own (`margin.app.Gateway`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from margin import errors as e
from margin.economics.money import ZERO_USD

JSON = "application/json"
INTERNAL = "internal error in the gateway"  # a crash's message to the client: nothing of the exception
NOSNIFF = ("x-content-type-options", "nosniff")
"""On every answer margin's own app makes (errors, admin, models, health, dashboard): a browser that opens one
takes it as the type it says and never sniffs a JSON body holding a caller's values as HTML or script."""
NOSNIFF_RAW = (NOSNIFF[0].encode(), NOSNIFF[1].encode())  # the same, as an ASGI header (margin.api.client)

# class → (HTTP status, OpenAI error type); a subclass not listed takes its nearest listed base's entry
MAPPING: dict[type[e.MarginError], tuple[int, str]] = {
    e.MarginError: (500, "server_error"),
    e.InvalidRequest: (400, "invalid_request_error"),
    e.AuthenticationFailed: (401, "authentication_error"),
    e.PermissionDenied: (403, "permission_error"),
    e.NotFound: (404, "invalid_request_error"),
    e.MethodNotAllowed: (405, "invalid_request_error"),
    e.Conflict: (409, "invalid_request_error"),
    e.PayloadTooLarge: (413, "invalid_request_error"),
    e.UnsupportedMediaType: (415, "invalid_request_error"),
    e.RateLimited: (429, "rate_limit_error"),
    e.Overloaded: (503, "server_error"),
    e.ResidencyUnavailable: (503, "server_error"),
    e.BackendError: (502, "upstream_error"),
    e.BackendTimeout: (504, "upstream_error"),
    e.BackendClientError: (400, "invalid_request_error"),
}


def _entry(error: e.MarginError) -> tuple[int, str]:
    for cls in type(error).__mro__:
        found = MAPPING.get(cls)
        if found is not None:
            return found
    return MAPPING[e.MarginError]


def status_of(error: e.MarginError) -> int:
    """The HTTP status of an error (an upstream's own 4xx is passed on as it was)."""
    if isinstance(error, e.BackendClientError):
        return error.upstream_status
    return _entry(error)[0]


def error_body(error: e.MarginError) -> dict[str, Any]:
    kind = _entry(error)[1]
    return {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.code}}


# HTTP status → Anthropic's error type (the Messages API answers errors in Anthropic's shape); another 4xx is
# `invalid_request_error`, another 5xx `api_error`; margin's `Overloaded` and an upstream's overload
# (`UpstreamOverloaded`: Anthropic's 529, or its `overloaded_error` event mid-stream) are `overloaded_error`
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}


def anthropic_error_body(error: e.MarginError) -> dict[str, Any]:
    """An error as Anthropic's API writes it: `{"type": "error", "error": {"type", "message"}}`."""
    status = status_of(error)
    if isinstance(error, e.Overloaded | e.UpstreamOverloaded):
        kind = "overloaded_error"
    else:
        kind = ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def error_headers(error: e.MarginError) -> dict[str, str]:
    """The headers an error's answer carries: its own (`retry-after`, …), and `x-should-retry: false` where
    sending the request again would change nothing."""
    if error.deterministic:
        return {**error.headers, e.SHOULD_RETRY: "false"}
    return error.headers


def reason(error: e.MarginError) -> str | None:
    """The `reason` label of a refusal: its code, margin's vocabulary; an upstream's own code (a 4xx passed on)
    is the upstream's text, so it counts under its class's code."""
    return type(error).default_code if isinstance(error, e.BackendClientError) else error.code


class Refusal(Response):
    """An error answer with no ledger row: counted under its reason once it is sent (`count=False`: counted
    elsewhere, as token counts are). The scope's app is the gateway (`margin.app.Gateway.refused`); a scope
    without one (an app assembled otherwise, in a test) counts nothing."""

    def __init__(self, content: bytes, status: int, headers: Mapping[str, str], reason: str | None, count: bool):
        super().__init__(content, status_code=status, media_type=JSON, headers=headers)
        self.reason, self.count = reason, count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = getattr(scope.get("app"), "refused", None) if self.count else None
        if refused is not None:
            refused(self.reason)
        await super().__call__(scope, receive, send)


def error_response(
    error: e.MarginError,
    request_id: str | None = None,
    status: int | None = None,
    body_of: Callable[[e.MarginError], dict[str, Any]] = error_body,
    count: bool = True,
) -> Response:
    """The OpenAI error JSON (`body_of`: another API's shape of it); `status` overrides the class's (an HTTP
    error starlette raised itself). Counted as a refusal when sent (`Refusal`)."""
    headers = {NOSNIFF[0]: NOSNIFF[1], **error_headers(error)}
    if request_id:
        headers["x-margin-request-id"] = headers["x-request-id"] = request_id
    body = orjson.dumps(body_of(error))
    return Refusal(body, status or status_of(error), headers, reason(error), count)


REQUEST_ID, OPENAI_REQUEST_ID = b"x-margin-request-id", b"x-request-id"
COST, OVERHEAD, ZERO = b"x-margin-cost-usd", b"x-margin-overhead-ms", ZERO_USD.encode()


def unspent_headers(request_id: str, started: float | None) -> dict[str, str]:
    """The headers every answer carries, for one that spent nothing: its request id (also as OpenAI's
    `x-request-id`), its cost (0) and margin's time since `started` (`time.perf_counter()`; None: not measured,
    no header)."""
    headers = {"x-margin-request-id": request_id, "x-request-id": request_id, "x-margin-cost-usd": ZERO_USD}
    if started is not None:
        headers["x-margin-overhead-ms"] = f"{(time.perf_counter() - started) * 1000:.3f}"
    return headers


class Stamped:
    """An ASGI `send` that gives an answer's head each of `unspent_headers` it does not have (an answer with its
    own request id, such as an admin change's, keeps it). Everything else passes unchanged."""

    __slots__ = ("request_id", "send", "started")

    def __init__(self, send: Send, request_id: str, started: float) -> None:
        self.send, self.request_id, self.started = send, request_id, started

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            have = {name.lower() for name, _ in headers}
            request_id = self.request_id.encode()
            overhead = b"%.3f" % ((time.perf_counter() - self.started) * 1000)
            for name, value in (
                (REQUEST_ID, request_id),
                (OPENAI_REQUEST_ID, request_id),
                (COST, ZERO),
                (OVERHEAD, overhead),
            ):
                if name not in have:
                    headers.append((name, value))
            message = {**message, "headers": headers}
        await self.send(message)


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """`data` as JSON, with nosniff (and `headers`)."""
    return Response(
        orjson.dumps(data), status_code=status, media_type=JSON, headers={NOSNIFF[0]: NOSNIFF[1], **(headers or {})}
    )
