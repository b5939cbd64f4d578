"""Bad input gets an OpenAI-shaped error with the right 4xx status, never a 500, and never hurts the ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Gateway, fake_settings, gateway

CHAT = "/v1/chat/completions"
GOOD = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}

CASES: list[tuple[str, str, Any, int, str | None, str | None]] = [
    # (name, path, body, status, code, param)
    ("not json", CHAT, b"{nope", 400, "invalid_request", None),
    ("empty body", CHAT, b"", 400, "invalid_request", None),
    ("json array", CHAT, [1, 2], 400, "invalid_request", None),
    ("missing model", CHAT, {"messages": GOOD["messages"]}, 400, "invalid_request", "model"),
    ("missing messages", CHAT, {"model": "fake-chat"}, 400, "invalid_request", "messages"),
    ("empty messages", CHAT, {"model": "fake-chat", "messages": []}, 400, "invalid_request", "messages"),
    (
        "bad role",
        CHAT,
        {"model": "fake-chat", "messages": [{"role": "robot", "content": "x"}]},
        400,
        "invalid_request",
        "messages.0.role",
    ),
    (
        "content wrong type",
        CHAT,
        {"model": "fake-chat", "messages": [{"role": "user", "content": 5}]},
        400,
        "invalid_request",
        "messages.0.content",  # the request's path, not the type tried first
    ),
    ("temperature too high", CHAT, {**GOOD, "temperature": 3}, 400, "invalid_request", "temperature"),
    ("temperature a string", CHAT, {**GOOD, "temperature": "hot"}, 400, "invalid_request", "temperature"),
    ("max_tokens zero", CHAT, {**GOOD, "max_tokens": 0}, 400, "invalid_request", "max_tokens"),
    ("too many stops", CHAT, {**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, "array_above_max_length", "stop"),
    ("stream not bool", CHAT, {**GOOD, "stream": "yes please"}, 400, "invalid_request", "stream"),
    # forwarded as sent, so never coerced: a number in a string reached the upstream as a string
    ("temperature a numeric string", CHAT, {**GOOD, "temperature": "0.5"}, 400, "invalid_request", "temperature"),
    ("n a numeric string", CHAT, {**GOOD, "n": "2"}, 400, "invalid_request", "n"),
    ("stream the string true", CHAT, {**GOOD, "stream": "true"}, 400, "invalid_request", "stream"),
    ("max_tokens a decimal", CHAT, {**GOOD, "max_tokens": 10.0}, 400, "invalid_request", "max_tokens"),
    ("unknown model", CHAT, {**GOOD, "model": "nope"}, 404, "model_not_found", "model"),
    ("embedding model on chat", CHAT, {**GOOD, "model": "fake-embed"}, 400, "wrong_model_kind", "model"),
    (
        "chat model on embeddings",
        "/v1/embeddings",
        {"model": "fake-chat", "input": "x"},
        400,
        "wrong_model_kind",
        "model",
    ),
    ("empty embedding input", "/v1/embeddings", {"model": "fake-embed", "input": []}, 400, "invalid_request", "input"),
    (
        "token ids to embeddings",
        "/v1/embeddings",
        {"model": "fake-embed", "input": [1, 2, 3]},
        400,
        "invalid_request",
        "input",
    ),
    ("completions without prompt", "/v1/completions", {"model": "fake-chat"}, 400, "invalid_request", "prompt"),
    ("empty prompt list", "/v1/completions", {"model": "fake-chat", "prompt": []}, 400, "invalid_request", "prompt"),
    ("unknown route", "/v1/nothing", GOOD, 404, "unknown_url", None),
]


@pytest.mark.parametrize(("name", "path", "body", "status", "code", "param"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input(
    gw: Gateway, name: str, path: str, body: Any, status: int, code: str | None, param: str | None
) -> None:
    raw = {"content": body, "headers": {"content-type": "application/json"}}
    kwargs = raw if isinstance(body, bytes) else {"json": body}
    response = await gw.http.post(path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["param"] == param and error["message"]
    assert error["type"] in {"invalid_request_error", "permission_error"}
    # the gateway still works and the ledger holds one good row for one good request
    ok = await gw.http.post(CHAT, json=GOOD)
    assert ok.status_code == 200
    rows = await gw.rows()
    assert [r.request_id for r in rows if r.status == "ok"] == [ok.headers["x-margin-request-id"]]


@pytest.mark.parametrize(
    ("path", "body"),
    [(CHAT, {**GOOD, "model": "fake-embed"}), ("/v1/completions", {"model": "fake-embed", "prompt": "x"}),
     ("/v1/embeddings", {"model": "fake-chat", "input": "x"})],
)  # fmt: skip
async def test_a_model_of_the_wrong_kind_names_the_path_called(gw: Gateway, path: str, body: Any) -> None:
    """An embedding model on chat was said not to serve `/v1/chat.completions`, a path that does not exist."""
    response = await gw.http.post(path, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["message"].endswith(f"it cannot serve {path}")


async def test_body_over_limit_is_413(db_path: Path) -> None:
    async with gateway(fake_settings(db_path, server={"max_body_bytes": 1000})) as gw:
        big = {**GOOD, "messages": [{"role": "user", "content": "x" * 2000}]}
        response = await gw.http.post(CHAT, json=big)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"

        async def body() -> AsyncIterator[bytes]:  # no content-length: the limit is enforced while reading
            for _ in range(3):
                yield b"x" * 600

        chunked = await gw.http.post(CHAT, content=body(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        assert await gw.rows() == []


async def test_wrong_method_is_405(gw: Gateway) -> None:
    response = await gw.http.get(CHAT)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


async def test_errors_carry_request_id(gw: Gateway) -> None:
    response = await gw.http.post(CHAT, json={**GOOD, "model": "nope"})
    assert len(response.headers["x-margin-request-id"]) == 32


async def test_unsupported_parameter_on_fake_is_ignored_but_vendor_fields_pass(gw: Gateway) -> None:
    response = await gw.http.post(CHAT, json={**GOOD, "vendor_field": {"anything": True}, "top_k": 5})
    assert response.status_code == 200
