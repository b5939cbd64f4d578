"""Issue 13 §2, guards in linear time with caps and off the event loop, attacked through a running gateway:
prompts built to hit the old quadratic paths (thousands of overlapping e-mail spans, the injection regex on
many newlines, PEM headers without footers) and the dear one (thousands of phone candidates) answer promptly
or are refused with 413 `guard_scan_limit`, while a normal request and `/healthz` keep answering; a body dense
with values is refused after `max_spans` of them were found, not after the guard read all of them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.helpers import cpu_seconds
from tests.security.conftest import Served, ServeFactory

CHAT = "/v1/chat/completions"
PROBE_LIMIT_S = 2.0  # generous: a normal request takes milliseconds here
STRICT = {"pii": "redact", "injection": "block"}
KEYS = {
    "attacker": ["--team", "a", "--policy", json.dumps(STRICT)],
    "logger": ["--team", "l", "--policy", json.dumps({"pii": "log", "injection": "log"})],
    "normal": ["--team", "n", "--policy", json.dumps(STRICT)],
}
GUARD = {"guard": {"max_scan_chars": 600_000}}


def chat(content: str) -> dict[str, Any]:
    return {"model": "fake-chat", "messages": [{"role": "user", "content": content}]}


def while_attacking(gw: Served, attack: Callable[[], httpx.Response]) -> tuple[httpx.Response, list[float]]:
    """Run `attack` on a thread; meanwhile a normal request and /healthz, again and again (at least 3 times).
    Returns the attack's response and how long each probe took."""
    result: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: result.append(attack()))
    thread.start()
    took: list[float] = []
    with gw.client(gw.keys["normal"]) as client:
        while thread.is_alive() or len(took) < 6:
            started = time.perf_counter()
            assert client.post(CHAT, json=chat("what is the capital of france")).status_code == 200
            assert client.get("/healthz").status_code == 200
            took.append(time.perf_counter() - started)
    thread.join()
    return result[0], took


def attack_with(gw: Served, key: str, content: str) -> Callable[[], httpx.Response]:
    def send() -> httpx.Response:
        with gw.client(gw.keys[key], timeout=120) as client:
            return client.post(CHAT, json=chat(content))

    return send


ATTACKS = {
    # 8,000 e-mails: ~1.4 s of pairwise overlap checks on the event loop before sort-and-sweep
    "emails": " ".join(f"user{i}@example.org" for i in range(8_000)),
    # the injection rule at `new instructions:` backtracked over every line start: minutes at this size
    "newlines": "new rules:\n" + "\n" * 300_000 + "x",
    # the PEM pattern re-read up to 8 KB after every header
    "pem_headers": "-----BEGIN PRIVATE KEY-----\n" * 8_000,
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_quadratic_inputs_answer_and_others_keep_answering(served: ServeFactory, name: str) -> None:
    with served(GUARD, keys=KEYS) as gw:
        response, took = while_attacking(gw, attack_with(gw, "attacker", ATTACKS[name]))
    assert response.status_code == 200, response.text
    assert max(took) < PROBE_LIMIT_S, took
    rows = gw.rows()
    assert len(rows) == 1 + len(took) and all(r.status == "ok" for r in rows)


def test_phone_candidate_flood_is_refused_not_ground_through(served: ServeFactory) -> None:
    flood = " ".join(f"call +44 20 7946 {i:04d}," for i in range(6_000))  # ~0.1-0.5 ms of phonenumbers each
    with served(GUARD, keys=KEYS) as gw:
        response, took = while_attacking(gw, attack_with(gw, "attacker", flood))
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "guard_scan_limit" and "max_phone_checks" in error["message"]
    assert max(took) < PROBE_LIMIT_S, took
    rows = gw.rows()
    assert len(rows) == 1 + len(took)
    refused = [r for r in rows if r.error_code == "guard_scan_limit"]
    assert len(refused) == 1 and refused[0].http_status == 413


def test_text_over_the_cap_is_refused_when_enforcing_and_recorded_when_logging(served: ServeFactory) -> None:
    huge = "plain words and more plain words " * 20_000  # 660,000 characters > guard.max_scan_chars
    with served(GUARD, keys=KEYS) as gw:
        with gw.client(gw.keys["attacker"]) as client:
            refused = client.post(CHAT, json=chat(huge))
        with gw.client(gw.keys["logger"]) as client:
            logged = client.post(CHAT, json=chat(huge))
    rows = gw.rows()  # after shutdown: every acknowledged row is written by then
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "guard_scan_limit"
    assert logged.status_code == 200
    assert len(rows) == 2 and rows[0].error_code == "guard_scan_limit"
    guard = json.loads(rows[1].guard) if isinstance(rows[1].guard, str) else rows[1].guard
    assert "max_scan_chars" in guard["scan_limit"]


def values(i: int) -> str:
    """Seven values, one of each structured kind (about 170 characters)."""
    return (
        f"Jane <jane{i}@example.org>, SSN 123-45-6789, card 4111 1111 1111 1111, from 10.0.{i % 256}.7, "
        f"IBAN GB82 WEST 1234 5698 7654 32, call +44 20 7946 0958, key AKIA{i:016d}. "
    )


CAPPED = {"guard": {"max_scan_chars": 1_000_000, "max_spans": 100}}
REFUSAL_CPU_S = 0.5  # measured 0.12-0.13 s; the scan that counted after every finder ran: 0.97-1.06 s


def test_a_body_dense_with_values_is_refused_after_max_spans_of_work(served: ServeFactory) -> None:
    """990,000 characters of e-mails, SSNs, cards, IPs, IBANs, phones and AWS keys (40,439 values) against
    `max_spans: 100`: refused with 413 `guard_scan_limit` once the finders have reported about 100 of them, not
    after every finder read the whole body. How cheap is read as the gateway's CPU time (/proc, not a clock):
    0.12-0.13 s on an idle 2-core machine, against 0.97-1.06 s when `max_spans` was checked after the finders
    (commit 0c296b8); a text of that size over `max_scan_chars`, refused before any scan, costs under 0.01 s."""
    parts: list[str] = []
    size = 0
    while size < 990_000:
        parts.append(values(len(parts)))
        size += len(parts[-1])
    dense = "".join(parts)
    with served(CAPPED, keys=KEYS) as gw:
        pid = gw.process.pid
        with gw.client(gw.keys["attacker"], timeout=120) as client:
            assert client.post(CHAT, json=chat(f"write to {values(0)}")).status_code == 200  # the first request's work
            before = cpu_seconds(pid)
            refused = client.post(CHAT, json=chat(dense))
            spent = cpu_seconds(pid) - before
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert error["code"] == "guard_scan_limit" and "guard.max_spans" in error["message"]
    assert spent < REFUSAL_CPU_S, f"the refusal took {spent:.2f} s of the gateway's CPU"
    rows = gw.rows()
    assert [(r.http_status, r.error_code) for r in rows if r.error_code] == [(413, "guard_scan_limit")]
    assert len(rows) == 2
