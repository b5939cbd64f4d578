"""In-process calls of the gateway's own API (the batch worker runs every line this way): an ASGI call of the
app exactly as a client's request would arrive (edge checks, routing, the whole request path), except that
the caller is already authenticated.

The scope carries an `InProcess` under `SCOPE_KEY`. No HTTP server puts such a key in a scope and no header
can create one, so no client can set it. Where authentication happens (`margin.api.inference.handle`), a
scope that has one is served as its principal, with its request id (a batch line attempt's deterministic id,
so that its row can be found before the line is marked done) and its batch line (the `batch_id` and the
discount).
Whoever moves authentication keeps that one check: `caller = inprocess.of(request.scope)`.

What the request path refused the call with, the error itself (`margin.api.inference.Run` puts it in the
caller's `refusals`), comes back with the answer (`Reply.refused`): the batch worker tells margin's own rate
limiter's refusal from an upstream's 429 by its class, the same for every endpoint's error shape (Anthropic's
has no code to read).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message

from margin.errors import MarginError
from margin.types import BatchLine, Principal

SCOPE_KEY = "margin.inprocess"


@dataclass(frozen=True, slots=True)
class InProcess:
    principal: Principal
    request_id: str
    batch: BatchLine | None = None
    refusals: list[MarginError] = field(default_factory=list)  # what the request path refused it with


def of(scope: Mapping[str, Any]) -> InProcess | None:
    value = scope.get(SCOPE_KEY)
    return value if isinstance(value, InProcess) else None


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    refused: MarginError | None = None  # the error the answer was made of, where the request path refused it


async def call(
    app: ASGIApp, path: str, body: bytes, caller: InProcess, headers: Mapping[str, str] | None = None
) -> Reply:
    """POST `body` (JSON) to `path` of `app` in this process; the whole answer."""
    sent = asyncio.Event()
    raw_headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()),
    ]
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": raw_headers,
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
        SCOPE_KEY: caller,
    }
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await sent.wait()
        return {"type": "http.disconnect"}

    status, answer_headers, chunks = 500, {}, []

    async def send(message: Message) -> None:
        nonlocal status, answer_headers
        if message["type"] == "http.response.start":
            status = int(message["status"])
            answer_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                sent.set()

    try:
        await app(scope, receive, send)
    finally:
        sent.set()
    return Reply(status, answer_headers, b"".join(chunks), caller.refusals[-1] if caller.refusals else None)
