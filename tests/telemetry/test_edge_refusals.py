"""The refusals margin answers itself before a request has a ledger row, against a running `margin serve` over real
HTTP: each is counted in `margin_rejections_total{reason=<its code>}` (a bad-key burst shows at the next scrape)
and carries the headers every answer carries (`x-margin-request-id`, `x-request-id`, `x-margin-cost-usd:
0.000000000`). Before, metrics came from ledger rows only, so a credential-stuffing burst was invisible, and an
answer of the edge (415, 431, an unknown route, 405, a bad key on /metrics) had no request id and no cost. A
refusal that has a row is counted from its row and only from it."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from margin.economics.money import ZERO_USD
from tests.governance.conftest import bearer, make_key
from tests.helpers import ledger_rows, polls, wait_ledger_row
from tests.security.conftest import FAKE_CONFIG, Served, serving_in

CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
JSON = {"content-type": "application/json"}
BURST = 25


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("edge-refusals")
    limits: dict[str, Any] = {"server": {"max_header_bytes": 4096, "max_body_bytes": 2048, "head_timeout_s": 1.0}}
    slow = {**FAKE_CONFIG["backends"]["fake"], "ttft_ms": 3000}  # an answer under way for 3 s
    limits["backends"] = {**FAKE_CONFIG["backends"], "slow": slow}
    limits["models"] = {**FAKE_CONFIG["models"], "slow-chat": {"backend": "slow"}}
    with serving_in(folder)(limits, keys={"admin": ["--admin"], "user": []}) as served:
        _, expired = make_key(served.db, name="old", expires_at=datetime.now(UTC) - timedelta(seconds=1))
        served.keys["expired"] = expired
        yield served


def rejections(gw: Served) -> dict[str, float]:
    """`margin_rejections_total` by reason, as a scrape reads it (an admin key, or none in open mode)."""
    admin = bearer(gw.keys["admin"]) if gw.keys else {}
    answer = httpx.get(f"{gw.url}/metrics", headers=admin, timeout=30)
    assert answer.status_code == 200, answer.text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(answer.text):
        if family.name == "margin_rejections":
            for sample in family.samples:
                if sample.name == "margin_rejections_total":
                    found[sample.labels["reason"]] = sample.value
    return found


def grew(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {reason: value - before.get(reason, 0) for reason, value in after.items() if value != before.get(reason, 0)}


def assert_unspent(answer: Any) -> str:
    """The headers every answer carries, for one that spent nothing (an httpx or an SDK's response); its id."""
    request_id = answer.headers.get("x-margin-request-id")
    assert request_id and answer.headers.get("x-request-id") == request_id, (answer.status_code, answer.headers)
    assert answer.headers.get("x-margin-cost-usd") == ZERO_USD, (answer.status_code, answer.headers)
    return str(request_id)


def raw(gw: Served, head: bytes) -> tuple[int, dict[str, str]]:
    """A request written on a socket (what an HTTP client will not send): the answer's status and headers."""
    host, port = gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer and (part := sock.recv(65536)):
            answer += part
    lines = answer.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers


def test_a_burst_of_bad_keys_shows_in_the_next_scrape_under_its_reasons(gw: Served) -> None:
    before = rejections(gw)
    stranger = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-stolen-maybe", max_retries=0)
    with stranger:
        for _ in range(BURST):
            with pytest.raises(openai.AuthenticationError):
                stranger.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    expired = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT, headers=bearer(gw.keys["expired"]))
    missing = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT)
    admin_guess = httpx.get(f"{gw.url}/metrics", headers=bearer("sk-admin-guess"))
    assert (expired.status_code, missing.status_code, admin_guess.status_code) == (401, 401, 401)
    counted = grew(before, rejections(gw))
    assert counted == {"invalid_api_key": BURST + 1, "key_expired": 1, "missing_api_key": 1}, counted
    for answer in (expired, missing, admin_guess):
        assert ledger_rows(gw.db, assert_unspent(answer)) == 0


def test_every_edge_refusal_class_has_a_request_id_and_cost_0_and_is_counted(gw: Served) -> None:
    key = bearer(gw.keys["user"])
    before = rejections(gw)
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        answers = {
            "unsupported_media_type": client.post("/v1/chat/completions", content=b"{}", headers=key),  # 415
            "unknown_url": client.get("/v1/no-such-route", headers=key),  # starlette's 404
            "method_not_allowed": client.get("/v1/chat/completions", headers=key),  # starlette's 405
            "request_too_large": client.post(  # 413 before reading: the declared length
                "/v1/chat/completions", content=b"{" + b" " * 4096 + b"}", headers={**key, **JSON}
            ),
            "invalid_request": client.post("/v1/chat/completions", content=b"{not json", headers={**key, **JSON}),
            "permission_denied": client.get("/admin/keys", headers=key),  # an admin route, a user key: 403
        }
        validation = client.post("/v1/chat/completions", json={"model": "fake-chat"}, headers=key)  # no messages
    statuses = {code: answer.status_code for code, answer in answers.items()}
    assert statuses == {
        "unsupported_media_type": 415, "unknown_url": 404, "method_not_allowed": 405, "request_too_large": 413,
        "invalid_request": 400, "permission_denied": 403,
    }  # fmt: skip
    for code, answer in answers.items():
        assert answer.json()["error"]["code"] == code  # OpenAI's error shape, as before
        assert ledger_rows(gw.db, assert_unspent(answer)) == 0
        assert 0 <= float(answer.headers["x-margin-overhead-ms"]) < 60_000
    assert validation.status_code == 400 and assert_unspent(validation)
    assert answers["method_not_allowed"].headers["allow"] == "POST"  # RFC 9110: a 405 says what is allowed
    status, headers = raw(gw, b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-a: " + b"b" * 8192 + b"\r\n\r\n")
    assert status == 431 and headers["x-margin-request-id"] == headers["x-request-id"]
    assert headers["x-margin-cost-usd"] == ZERO_USD
    status, headers = raw(gw, b"NOT-HTTP\r\n\r\n")
    assert status == 400 and headers["x-margin-request-id"] and headers["x-margin-cost-usd"] == ZERO_USD
    status, headers = raw(gw, b"GET /healthz HTTP/1.1\r\nhost: x\r\n")  # the head never ends: 408 after 1 s
    assert status == 408 and headers["x-margin-request-id"] and headers["x-margin-cost-usd"] == ZERO_USD
    counted = grew(before, rejections(gw))
    expected = dict.fromkeys(answers, 1) | {"headers_too_large": 1, "invalid_http": 1, "request_timeout": 1}
    expected["invalid_request"] += 1  # the validation error
    assert counted == expected, counted


def test_a_pipelined_refusal_cut_off_behind_an_answer_under_way_is_not_counted(gw: Served) -> None:
    """A request pipelined behind one whose answer is under way cannot be answered (its 431 would pass for the first
    request's answer): the connection is cut instead, and a refusal nobody was told of is not counted. An answered
    431 on its own connection still is."""
    before = rejections(gw)
    body = b'{"model": "slow-chat", "messages": [{"role": "user", "content": "hi"}]}'
    first = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    first += b"authorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s" % (gw.keys["user"].encode(), len(body), body)
    second = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-a: " + b"b" * 8192 + b"\r\n\r\n"
    host, port = gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(first + second)
        seen = b""
        while part := sock.recv(65536):  # the gateway closes the connection
            seen += part
    assert b" 431 " not in seen, seen[:200]
    status, _ = raw(gw, b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-a: " + b"b" * 8192 + b"\r\n\r\n")
    assert status == 431
    assert grew(before, rejections(gw)) == {"headers_too_large": 1}  # the answered one only


def test_every_answer_has_a_request_id_and_its_ids_differ(gw: Served) -> None:
    """Not only refusals: a health check, the model list, the scrape itself (answers that spent nothing)."""
    ids = set()
    for path, headers in (
        ("/healthz", {}),
        ("/v1/models", bearer(gw.keys["user"])),
        ("/metrics", bearer(gw.keys["admin"])),
    ):
        answer = httpx.get(f"{gw.url}{path}", headers=headers)
        assert answer.status_code == 200
        ids.add(assert_unspent(answer))
    assert len(ids) == 3


def test_a_refusal_with_a_ledger_row_is_counted_once_from_its_row(gw: Served) -> None:
    """An unknown model on the request path has a row (counted from it); the same code answered before any row
    (`GET /v1/models/{id}`) is counted at the edge: two, never three."""
    before = rejections(gw)
    key = gw.keys["user"]
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0) as client:
        with pytest.raises(openai.NotFoundError) as on_path:
            client.chat.completions.create(**{**CHAT, "model": "no-such-model"})  # type: ignore[call-overload]
        with pytest.raises(openai.NotFoundError) as at_edge:
            client.models.retrieve("no-such-model")
    row = wait_ledger_row(gw.db, gw.url, on_path.value.response.headers["x-request-id"])
    assert row.error_code == "model_not_found"
    counted: dict[str, Any] = {}
    for _ in polls(10):  # the row is observed when it settles, after the answer
        counted = grew(before, rejections(gw))
        if counted.get("model_not_found", 0) >= 2:
            break
        time.sleep(0.2)
    time.sleep(1.2)  # one more refresh: a third count would show now
    counted = grew(before, rejections(gw))
    assert counted == {"model_not_found": 2}, counted
    assert ledger_rows(gw.db, assert_unspent(at_edge.value.response)) == 0


def test_open_mode_refusals_of_other_hosts_and_origins_are_counted_with_their_headers(tmp_path: Path) -> None:
    """Open mode (no keys) answers only loopback hosts and same-origin browsers: its refusals are edge answers
    too (the scrape itself is allowed: loopback)."""
    with serving_in(tmp_path)() as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        before = rejections(gw)
        rebound = client.get("/v1/models", headers={"host": "evil.example"})
        cross = client.post("/v1/chat/completions", json=CHAT, headers={"origin": "http://evil.example"})
        assert (rebound.status_code, cross.status_code) == (403, 403)
        assert grew(before, rejections(gw)) == {"loopback_only": 1, "cross_origin": 1}
        for answer, code in ((rebound, "loopback_only"), (cross, "cross_origin")):
            assert answer.json()["error"]["code"] == code
            assert ledger_rows(gw.db, assert_unspent(answer)) == 0
