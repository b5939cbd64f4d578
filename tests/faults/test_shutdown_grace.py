"""A stream still running when the graceful period after SIGTERM ends (`server.shutdown_grace_s`, uvicorn's
`timeout_graceful_shutdown`) ends with an error event (`server_shutting_down`) in its API's shape before the
connection closes, and its row is written `cancelled` with what the client was told (503 `server_shutting_down`;
before: 499 `cancelled`, also for the request answered 503). Before, it was cut mid-body: no error, no end
(no `[DONE]`, no `response.failed`, no Messages `error`). `margin serve` over real HTTP, the fault upstream's
`stall` (two events, then silence) behind chat, Responses and Messages streams."""

from __future__ import annotations

import contextlib
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml

from margin.ledger.models import ledger
from tests.faults.conftest import FaultUpstream
from tests.helpers import ledger_columns, margin_serve, polls

GRACE_S = 1.0
SLOW = "slow,delay=60"  # a JSON answer that has not come when the grace ends
PRICE = {"input": "1", "output": "1"}
MESSAGES = [{"role": "user", "content": "hello"}]
STREAMS = {
    "/v1/chat/completions": {"model": "m", "messages": MESSAGES, "stream": True},
    "/v1/responses": {"model": "m", "input": "hello", "stream": True},
    "/v1/messages": {"model": "m", "messages": MESSAGES, "max_tokens": 50, "stream": True},
}


def test_a_stream_past_the_graceful_period_ends_with_an_error_event(
    fault_upstream: FaultUpstream, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    config = {
        "server": {"shutdown_grace_s": GRACE_S},
        "storage": {"ledger": url, "flush_interval_ms": 50},
        "backends": {
            "stall": {"kind": "openai", "base_url": fault_upstream.base("stall,events=2", "grace")},
            "slow": {"kind": "openai", "base_url": fault_upstream.base(SLOW, "grace")},
        },
        "models": {"m": {"backend": "stall", "price": PRICE}, "slow": {"backend": "slow", "price": PRICE}},
    }
    path = tmp_path / "margin.yaml"
    path.write_text(yaml.safe_dump(config))
    bodies: dict[str, str] = {}
    with (
        margin_serve(None, tmp_path / "serve.log", path) as (base, process),
        httpx.Client(base_url=base, timeout=30) as client,
        contextlib.ExitStack() as streams,
        ThreadPoolExecutor(1) as pool,
    ):
        opened = {
            route: streams.enter_context(client.stream("POST", route, json=body)) for route, body in STREAMS.items()
        }
        for route, response in opened.items():
            assert response.status_code == 200, route  # the stream started: the upstream's events came
        whole = pool.submit(client.post, "/v1/chat/completions", json={"model": "slow", "messages": MESSAGES})
        for _ in polls(10):
            if fault_upstream.count(SLOW, "grace"):
                break
            time.sleep(0.05)
        assert fault_upstream.count(SLOW, "grace"), "the slow request did not reach the upstream"
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        for route, response in opened.items():
            bodies[route] = response.read().decode()  # to the end: the connection closes after the grace
        assert GRACE_S <= time.monotonic() - started < GRACE_S + 15
        answered = whole.result(timeout=30)
        process.wait(timeout=30)
    # a request not yet answered: 503, retryable (before: uvicorn's plain-text 500)
    assert answered.status_code == 503 and answered.json()["error"]["code"] == "server_shutting_down", answered.text
    chat, responses, messages = bodies.values()
    # before: each ended after the upstream's two events, with no error and no end
    assert '"code":"server_shutting_down"' in chat and chat.endswith("data: [DONE]\n\n"), chat
    assert "event: response.failed" in responses and "server_shutting_down" in responses, responses
    assert "event: error" in messages and '"type":"overloaded_error"' in messages, messages  # its SDK retries it
    rows = ledger_columns(url, ledger.c.endpoint, ledger.c.status, ledger.c.http_status, ledger.c.error_code)
    assert sorted(rows) == [  # what each client was told (before: 499 `cancelled`, the 503 answer's row too)
        ("chat.completions", "cancelled", 503, "server_shutting_down"),
        ("chat.completions", "cancelled", 503, "server_shutting_down"),
        ("messages", "cancelled", 503, "server_shutting_down"),
        ("responses", "cancelled", 503, "server_shutting_down"),
    ], rows
