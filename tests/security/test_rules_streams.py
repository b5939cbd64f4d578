"""Issue 13 §2 (streams), attacked through a running `margin serve`: a client that stops reading is cut off
on a write timeout (row written as client_closed, backend released, budget settled) while others are served;
one key cannot hold more than its share of streams; a reservation that outlives its deadline is charged at
its reserved amount, never released for free."""

from __future__ import annotations

import json
import socket
import time
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from tests.security.conftest import FAKE_CONFIG, Served, ServeFactory
from tests.security.waiting import wait_for

CHAT = "/v1/chat/completions"
FAKE = FAKE_CONFIG["backends"]["fake"]


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], **extra}


def team_budget(gw: Served) -> dict[str, Any]:
    with gw.client(gw.keys["admin"]) as admin:
        return dict(admin.get("/admin/budgets").json()["data"][0])


def open_stalled_stream(gw: Served, key: str, body: dict[str, Any]) -> socket.socket:
    """A client that sends a streaming request, reads the first bytes, then never reads again."""
    address = urlsplit(gw.url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((address.hostname, address.port))
    payload = json.dumps(body).encode()
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    assert sock.recv(64).startswith(b"HTTP/1.1 200")
    return sock


def test_a_client_that_stops_reading_is_cut_off_and_its_request_settled(served: ServeFactory) -> None:
    config = {
        "server": {"stream_write_timeout_s": 1},
        "backends": {"fake": {**FAKE, "word": "x" * 4000, "output_tokens": 100_000}},
        "budgets": [{"name": "t", "scope": {"kind": "team", "value": "t"}, "usd": "100", "period": "day"}],
    }
    with served(config, keys={"admin": ["--admin"], "k": ["--team", "t"]}) as gw:
        stalled = open_stalled_stream(gw, gw.keys["k"], chat(stream=True, max_tokens=100_000))
        try:
            with gw.client(gw.keys["k"], timeout=10) as client:  # everyone else is served meanwhile
                assert client.post(CHAT, json=chat(max_tokens=3)).status_code == 200
            wait_for(lambda: any(row.stream for row in gw.rows()), "the stalled stream's row", timeout_s=30)
            row = next(row for row in gw.rows() if row.stream)
            assert (row.status, row.http_status, row.error_code) == ("client_closed", 499, "stream_write_timeout")
            assert 0 < row.output_tokens < 100_000  # the backend was stopped, not drained
            wait_for(lambda: team_budget(gw)["reserved"] == "0.000000000", "the stream's budget settled")
            assert Decimal(team_budget(gw)["spent"]) > 0
            stalled.settimeout(20)  # the gateway closed the connection: what was buffered, then EOF
            while stalled.recv(1 << 20):
                pass
        finally:
            stalled.close()


def test_one_key_cannot_hold_more_than_its_streams(served: ServeFactory) -> None:
    config = {
        "admission": {"max_streams_per_key": 2},
        "backends": {"fake": {**FAKE, "tokens_per_s": 5, "output_tokens": 50}},
    }
    body = chat(stream=True, max_tokens=50)
    with served(config, keys={"k": ["--team", "t"], "other": ["--team", "t"]}) as gw, gw.client(gw.keys["k"]) as client:
        with client.stream("POST", CHAT, json=body) as first, client.stream("POST", CHAT, json=body) as second:
            assert first.status_code == second.status_code == 200
            reading = [first.iter_raw(), second.iter_raw()]  # kept: a dropped iterator closes its stream
            assert all(next(chunks) for chunks in reading)
            third = client.post(CHAT, json=body)
            assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_streams"
            assert client.post(CHAT, json=chat(max_tokens=2)).status_code == 200  # whole answers still work
            with gw.client(gw.keys["other"]) as other:
                assert other.post(CHAT, json=chat(stream=True, max_tokens=2)).status_code == 200
        # closing the two streams gives their slots back
        wait_for(lambda: client.post(CHAT, json=chat(stream=True, max_tokens=2)).status_code == 200, "a slot")
    codes = [row.error_code for row in gw.rows()]
    assert "too_many_streams" in codes and codes.count("stream_write_timeout") == 0  # refusals are rows too


def test_the_stream_cap_holds_across_workers(served: ServeFactory) -> None:
    """`--workers 2`, no Redis configured: the supervisor's embedded Redis holds the slots, so a key with one
    slot cannot open a second stream on the other worker (fresh connections land on both; per-process slots
    let about half of them through)."""
    config = {
        "admission": {"max_streams_per_key": 1},
        "backends": {"fake": {**FAKE, "tokens_per_s": 5, "output_tokens": 100}},  # a 20-second stream
    }
    body = chat(stream=True, max_tokens=100)
    keys = {"k": ["--team", "t"], "admin": ["--admin"]}
    with served(config, keys=keys, extra=["--workers", "2"]) as gw:
        auth = {"authorization": f"Bearer {gw.keys['admin']}"}
        seen: set[int] = set()  # the second worker may still be starting when the first answers: wait for it

        def both_answered() -> bool:
            with gw.client(gw.keys["k"]) as fresh:
                seen.add(fresh.get("/healthz", headers=auth).json()["pid"])
            return len(seen) == 2

        wait_for(both_answered, "both workers", timeout_s=60)
        with gw.client(gw.keys["k"]) as client, client.stream("POST", CHAT, json=body) as first:
            assert first.status_code == 200
            chunks = first.iter_raw()  # kept: a dropped iterator closes its stream
            assert next(chunks)
            pids: set[int] = set()
            codes: list[int] = []
            deadline = time.monotonic() + 10  # well within the stream's 20 s
            while len(codes) < 16 or (len(pids) < 2 and time.monotonic() < deadline):
                # a new connection each time: the kernel spreads them over the workers
                with gw.client(gw.keys["k"]) as fresh:  # one keep-alive connection: one worker answers both
                    pids.add(fresh.get("/healthz", headers=auth).json()["pid"])
                    codes.append(fresh.post(CHAT, json=body).status_code)
            assert len(pids) == 2 and codes == [429] * len(codes)
        # the stream ended (client gone): its slot comes back, on whichever worker asks
        wait_for(lambda: client_code(gw, body) == 200, "the slot back", timeout_s=15)


def client_code(gw: Served, body: dict[str, Any]) -> int:
    with gw.client(gw.keys["k"]) as client, client.stream("POST", CHAT, json=body) as reply:
        return int(reply.status_code)


def test_a_reservation_past_its_deadline_is_charged_not_released(served: ServeFactory) -> None:
    config = {
        "admission": {"reservation_ttl_s": 1, "refresh_s": 0.2},
        "backends": {"fake": {**FAKE, "tokens_per_s": 5, "output_tokens": 30}},  # a 6-second stream
        "budgets": [{"name": "t", "scope": {"kind": "team", "value": "t"}, "usd": "100", "period": "day"}],
    }
    with served(config, keys={"admin": ["--admin"], "k": ["--team", "t"]}) as gw:
        with gw.client(gw.keys["k"]) as client, client.stream("POST", CHAT, json=chat(stream=True, max_tokens=30)) as s:
            chunks = s.iter_raw()  # kept: a dropped iterator closes its stream
            next(chunks)
            # past its 1 s deadline, the open stream's reservation becomes spend, at the reserved amount
            wait_for(lambda: Decimal(team_budget(gw)["spent"]) > 0, "the reaper's charge", timeout_s=4)
            charged = team_budget(gw)
            assert charged["reserved"] == "0.000000000" and gw.rows() == []  # not settled, not released
            for _ in chunks:
                pass
        wait_for(lambda: len(gw.rows()) == 1, "the stream's row")
        cost = Decimal(gw.rows()[0].cost_nanousd) / Decimal(10**9)
        # the late settlement replaced the charge by the actual cost, exactly once
        wait_for(lambda: Decimal(team_budget(gw)["spent"]) == cost, "the actual cost")
        assert Decimal(charged["spent"]) != cost  # what was charged was the reservation, not the cost
