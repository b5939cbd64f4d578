"""The edge checks from headers alone (margin.api.edge): open mode's loopback Host and same-origin rule,
JSON-only bodies. The attacks through a running gateway are in tests/security/test_edge_fail_closed.py."""

from __future__ import annotations

from typing import Any

import pytest

from margin.api.edge import host_name, is_json, loopback_host, refusal, same_origin
from margin.api.errors import status_of


def scope(method: str = "POST", path: str = "/v1/chat/completions", **headers: str) -> dict[str, Any]:
    raw = [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    return {"type": "http", "method": method, "path": path, "headers": raw}


@pytest.mark.parametrize(
    ("host", "name", "loopback"),
    [
        ("127.0.0.1:8000", "127.0.0.1", True),
        ("localhost", "localhost", True),
        ("LOCALHOST:1", "localhost", True),
        ("[::1]:8000", "::1", True),
        ("127.9.9.9", "127.9.9.9", True),
        ("evil.example:8000", "evil.example", False),
        ("localhost.evil.example", "localhost.evil.example", False),
        ("127.0.0.1.nip.io", "127.0.0.1.nip.io", False),
        ("[::1", "", False),
        ("0.0.0.0:8000", "0.0.0.0", False),
    ],
)
def test_host_names(host: str, name: str, loopback: bool) -> None:
    assert host_name(host) == name
    assert loopback_host(host) is loopback


def test_loopback_host_needs_a_host() -> None:
    assert loopback_host(None) is False


def test_same_origin() -> None:
    assert same_origin(None, "127.0.0.1:8000")
    assert same_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert same_origin("https://gw.example", "gw.example")
    assert not same_origin("http://127.0.0.1:8001", "127.0.0.1:8000")
    assert not same_origin("null", "127.0.0.1:8000")
    assert not same_origin("file://", "127.0.0.1:8000")
    assert not same_origin("http://evil.example", "127.0.0.1:8000")
    assert not same_origin("http://127.0.0.1:8000", None)


def test_is_json() -> None:
    assert is_json("application/json") and is_json("Application/JSON; charset=utf-8")
    for other in (None, "", "text/plain", "application/json-seq", "application/x-www-form-urlencoded"):
        assert not is_json(other)


def test_closed_gateway_needs_json_bodies_only() -> None:
    assert refusal(scope(content_type="application/json", host="evil.example"), open_mode=False) is None
    assert refusal(scope("GET", "/v1/models", host="evil.example"), open_mode=False) is None
    for method in ("POST", "PUT", "PATCH"):
        refused = refusal(scope(method, "/admin/budgets", content_type="text/plain"), open_mode=False)
        assert refused is not None and status_of(refused) == 415
    assert refusal(scope("POST", "/admin/reload"), open_mode=False) is not None  # no content type at all
    form = scope("POST", "/dashboard/login", content_type="application/x-www-form-urlencoded")
    assert refusal(form, open_mode=False) is None  # the HTML form checks its Origin itself


def test_open_gateway_answers_loopback_and_same_origin_only() -> None:
    ok = scope(host="127.0.0.1:8000", content_type="application/json")
    assert refusal(ok, open_mode=True) is None
    assert refusal(scope("GET", "/healthz", host="localhost:8000", origin="http://localhost:8000"), True) is None
    rebound = refusal(scope("GET", "/v1/models", host="attacker.example:8000"), open_mode=True)
    assert rebound is not None and status_of(rebound) == 403 and rebound.code == "loopback_only"
    assert refusal(scope("GET", "/v1/models"), open_mode=True) is not None  # no Host header: refused
    foreign = refusal(scope(host="127.0.0.1:8000", origin="https://attacker.example"), open_mode=True)
    assert foreign is not None and foreign.code == "cross_origin"
    form = scope("POST", "/dashboard/login", host="127.0.0.1:8000", origin="http://attacker.example")
    assert refusal(form, open_mode=True) is not None
