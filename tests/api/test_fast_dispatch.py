"""The inference POSTs skip Starlette's router and error middlewares; their answers and errors must not
change (same 500 body for an unexpected error, same 404/405 for everything else)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.requests import Request

from margin.app import Gateway, build_app
from tests.helpers import fake_settings

BODY = orjson.dumps({"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]})


async def call(
    app: Any, method: str, path: str, body: bytes = b"", messages: list[dict[str, Any]] | None = None
) -> tuple[int, dict[str, Any]]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:2"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    messages = [] if messages is None else messages
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    status = messages[0]["status"]
    content = b"".join(m.get("body", b"") for m in messages[1:])
    return status, orjson.loads(content)


async def test_unexpected_handler_error_is_the_same_500_and_reraised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = build_app(fake_settings(tmp_path / "ledger.db"))
    assert isinstance(app, Gateway)

    async def broken(request: Request) -> Any:
        raise RuntimeError("boom")

    app.fast["/v1/chat/completions"] = broken
    sent: list[dict[str, Any]] = []
    with caplog.at_level(logging.ERROR, logger="margin"), pytest.raises(RuntimeError, match="boom"):
        await call(app, "POST", "/v1/chat/completions", BODY, sent)
    assert "unhandled error on /v1/chat/completions" in caplog.text
    assert sent[0]["status"] == 500
    error = orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))["error"]
    assert error["message"] == "internal error in the gateway"
    assert error["type"] == "server_error"


async def test_answers_through_the_fast_path(tmp_path: Path) -> None:
    app = build_app(fake_settings(tmp_path / "ledger.db"))
    async with app.router.lifespan_context(app):
        status, payload = await call(app, "POST", "/v1/chat/completions", BODY)
        assert status == 200
        assert payload["object"] == "chat.completion"
        status, payload = await call(app, "POST", "/v1/chat/completions", b"{")
        assert status == 400
        assert payload["error"]["type"] == "invalid_request_error"
        assert "not valid JSON" in payload["error"]["message"]


async def test_other_methods_and_paths_still_go_through_starlette(tmp_path: Path) -> None:
    app = build_app(fake_settings(tmp_path / "ledger.db"))
    async with app.router.lifespan_context(app):
        status, payload = await call(app, "GET", "/v1/chat/completions")
        assert status == 405
        assert "method GET is not allowed" in payload["error"]["message"]
        status, payload = await call(app, "POST", "/v1/chat/completion")
        assert status == 404
        assert payload["error"]["code"] == "unknown_url"
