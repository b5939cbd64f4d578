"""Slow clients: a connection that sends half a head, or nothing, or stops half-way through a body was held for
ever (uvicorn has no deadline while it reads a request), and with it a file descriptor: a few thousand such
connections took every descriptor of a default `ulimit -n`. Now a head has a total deadline
(`server.head_timeout_s`), a body an idle one (`server.body_timeout_s`), and a process at most
`server.max_connections` connections (margin.api.heads). Raw sockets: an HTTP client would not misbehave."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from tests.security.conftest import FAKE_CONFIG, Served, ServeFactory

CHAT = b'{"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}'
LIMITS = {"server": {"head_timeout_s": 1.0, "body_timeout_s": 1.0, "max_connections": 40}}
WAIT = 15.0  # far past every deadline above: a connection still open then was never going to end


@contextmanager
def connection(url: str) -> Iterator[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        yield sock


def head(url: str, body: bytes = CHAT, length: int | None = None) -> bytes:
    host = url.removeprefix("http://").encode()
    size = len(body) if length is None else length
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % (host, size)
    )


def answer(sock: socket.socket) -> tuple[bytes, float]:
    """What the gateway sends before it closes (b"" for a close with no answer), and after how many seconds."""
    began, got = time.monotonic(), b""
    while chunk := sock.recv(65536):
        got += chunk
    return got, time.monotonic() - began


def one_response(sock: socket.socket) -> bytes:
    """One whole answer with a content-length, the connection left open."""
    got = b""
    while b"\r\n\r\n" not in got or len(got.partition(b"\r\n\r\n")[2]) < length(got):
        chunk = sock.recv(65536)
        assert chunk, got[:200]
        got += chunk
    return got


def length(got: bytes) -> int:
    for line in got.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def status(got: bytes) -> int:
    return int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.1 ") else 0


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def normal_request_succeeds(gw: Served) -> None:
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        response = client.post("/v1/chat/completions", content=CHAT, headers={"content-type": "application/json"})
        assert response.status_code == 200, response.text


def test_a_head_that_never_ends_gets_408_and_an_idle_connection_is_closed(served: ServeFactory) -> None:
    """Half a head, the same head sent a byte every 0.1 s (a total deadline, not an idle one: each byte would
    reset an idle one), half of a second request on a kept-alive connection: 408 and closed, each within a few
    seconds of the 1 s deadline; a connection that sends nothing is closed without an answer."""
    with served(LIMITS) as gw:
        full = head(gw.url)
        with connection(gw.url) as sock:
            sock.sendall(full[:40])
            got, seconds = answer(sock)
            assert status(got) == 408 and seconds < WAIT / 2, (got[:60], seconds)
        with connection(gw.url) as sock:
            began = time.monotonic()
            for byte in full[:-4]:
                try:
                    sock.send(bytes([byte]))
                except OSError:  # closed under us: the answer is already in the socket's buffer
                    break
                time.sleep(0.1)
            got, _ = answer(sock)
            assert status(got) == 408 and time.monotonic() - began < WAIT / 2, got[:60]
        with connection(gw.url) as sock:
            sock.sendall(full + CHAT)
            first = one_response(sock)
            assert status(first) == 200, first[:60]
            sock.sendall(full[:20])
            got, seconds = answer(sock)
            assert status(got) == 408 and seconds < WAIT / 2, (got[:60], seconds)
        with connection(gw.url) as sock:
            got, seconds = answer(sock)
            assert got == b"" and seconds < WAIT / 2, (got[:60], seconds)
        normal_request_succeeds(gw)


def test_a_stalled_body_gets_408_and_a_slow_one_that_keeps_coming_passes(served: ServeFactory) -> None:
    """A head with half its body then silence: 408 (the app reads a disconnect; no ledger row). A body sent in
    five parts 0.5 s apart (2 s in all, twice the 1 s idle deadline) is answered 200 and recorded."""
    with served(LIMITS) as gw:
        with connection(gw.url) as sock:
            sock.sendall(head(gw.url) + CHAT[:20])
            got, seconds = answer(sock)
            assert status(got) == 408 and seconds < WAIT / 2, (got[:60], seconds)
        with connection(gw.url) as sock:
            sock.sendall(head(gw.url))
            for start in range(0, len(CHAT), len(CHAT) // 4):
                time.sleep(0.5)
                sock.sendall(CHAT[start : start + len(CHAT) // 4])
            got = one_response(sock)
            assert status(got) == 200, got[:200]
        assert wait_rows(gw, 1) and len(gw.rows()) == 1  # the slow request's; the stalled one never reached it


def test_clients_that_leave_mid_body_leave_no_traceback_in_the_log(served: ServeFactory, tmp_path: Path) -> None:
    """Half a body, then the connection closed, 20 times, on an inference route and on an admin one: nothing
    to answer, and nothing in the log (each used to log the same traceback twice: a way to fill the disk)."""
    with served(LIMITS) as gw:
        for path in ("/v1/chat/completions", "/admin/budgets"):
            for _ in range(20):
                with connection(gw.url) as sock:
                    sock.sendall(head(gw.url).replace(b"/v1/chat/completions", path.encode()) + CHAT[:20])
        normal_request_succeeds(gw)
        log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log and "ClientDisconnect" not in log, log[-2000:]


def test_connections_past_the_cap_get_503_and_deadlines_give_them_back(served: ServeFactory) -> None:
    """With `max_connections: 40`, 300 connections that send nothing: the gateway never holds more than ~40 of
    them (its open files stay within 40 of where they were), the others get 503 at once; once the 1 s head
    deadline has closed the 40, an ordinary request is answered."""
    with served(LIMITS) as gw:
        normal_request_succeeds(gw)
        before = open_files(gw.process.pid)
        with ExitStack() as stack:
            socks = [stack.enter_context(connection(gw.url)) for _ in range(300)]
            time.sleep(0.3)
            held = open_files(gw.process.pid) - before
            answers = [answer(sock)[0] for sock in socks]
        refused = sum(status(got) == 503 for got in answers)
        assert held <= 40 + 5, held
        assert refused >= 300 - 40 - 5, refused
        assert all(status(got) in (0, 503) for got in answers)
        normal_request_succeeds(gw)


def test_workers_have_the_deadlines(served: ServeFactory) -> None:
    """`margin serve --workers 2`: the deadlines reach the worker processes (with the configured values)."""
    with served(LIMITS, extra=["--workers", "2"]) as gw:
        for _ in range(4):  # fresh connections, spread over both workers
            with connection(gw.url) as sock:
                sock.sendall(head(gw.url)[:40])
                got, seconds = answer(sock)
                assert status(got) == 408 and seconds < WAIT / 2, (got[:60], seconds)
        normal_request_succeeds(gw)


def test_a_client_that_reads_none_of_its_answer_is_dropped_with_the_unsent_bytes(served: ServeFactory) -> None:
    """Six clients ask for ~10 MB of embeddings each and read nothing: before, each connection and its answer
    (handed to the transport whole) were held for ever (10 of them: +470 MiB, still there 45 s later). Now the
    connection is reset `stream_write_timeout_s` + 2 s after the client stopped reading: each client gets what
    the kernel had let through (~33 KB) and then the reset. The rows are written (the answers were made)."""
    backends = {"fake": {**FAKE_CONFIG["backends"]["fake"], "embedding_dim": 256}}
    config = {**LIMITS, "backends": backends, "server": {**LIMITS["server"], "stream_write_timeout_s": 1.0}}
    body = json.dumps({"model": "fake-embed", "input": ["hello world"] * 2000}).encode()
    with served(config) as gw, ExitStack() as stack:
        host = gw.url.removeprefix("http://").encode()
        request = (
            b"POST /v1/embeddings HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (host, len(body), body)
        )
        socks = []
        for _ in range(6):
            sock = stack.enter_context(connection(gw.url))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(request)
            socks.append(sock)
        log = gw.db.parent / "serve.log"  # where the gateway logs each connection it drops
        deadline = time.monotonic() + 120
        while log.read_text().count("connection dropped") < 6:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        for sock in socks:  # what the kernel had let through, then a reset (not the rest, slowly, then the end)
            got, reset = b"", False
            try:
                while chunk := sock.recv(1 << 20):
                    got += chunk
            except ConnectionResetError:
                reset = True
            assert status(got) == 200 and reset and len(got.partition(b"\r\n\r\n")[2]) < length(got), len(got)
        assert wait_rows(gw, 6)
        normal_request_succeeds(gw)


def wait_rows(gw: Served, n: int) -> bool:
    deadline = time.monotonic() + 10
    while len(gw.rows()) < n:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
