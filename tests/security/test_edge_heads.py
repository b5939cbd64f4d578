"""A bound on each request's head (`server.max_header_bytes`, 64 KiB): uvicorn reads headers without one.
Before it, 32 MiB of `x-a: b` lines held the event loop ~2.5 s and grew the gateway by ~540 MiB. The attacks
are raw sockets (an HTTP client refuses such heads) that stream the head until the gateway answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from tests.helpers import peak_rss
from tests.security.conftest import ServeFactory
from tests.security.waiting import watched

MIB = 1024 * 1024
READ = 64 * 1024
CHAT = b'{"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}'


@dataclass
class Answer:
    status: int  # 0: the connection ended without an answer
    sent: int  # bytes of the head the attacker got out before the gateway answered or closed
    seconds: float


def request_head(url: str, path: str, chunked: bool = False) -> bytes:
    method = b"POST" if path.startswith("/v1/") else b"GET"
    host = url.removeprefix("http://").encode()
    head = b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method, path.encode(), host)
    if chunked:
        head += b"content-type: application/json\r\ntransfer-encoding: chunked\r\n"
    elif method == b"POST":
        head += b"content-type: application/json\r\ncontent-length: %d\r\n" % len(CHAT)
    return head


def lines(total: int) -> Iterator[bytes]:
    """`total` bytes of small header lines (a multiple of 8)."""
    for start in range(0, total, READ):
        yield b"x-a: b\r\n" * (min(READ, total - start) // 8)


def cookie(total: int) -> Iterator[bytes]:
    """One cookie header of `total` bytes."""
    yield b"cookie: "
    for start in range(0, total, READ):
        yield b"a" * min(READ, total - start)
    yield b"\r\n"


def send(url: str, path: str, filler: Iterator[bytes], trailers: bool = False) -> Answer:
    """The request line, `filler`'s header bytes (sent as fast as the gateway takes them, until it answers or
    closes), the end of the head and, for a chat request, its body; then the gateway's answer. `trailers`: a
    chunked chat request whose body is followed by `filler` as its trailers."""
    host, port = url.removeprefix("http://").split(":")
    started = time.perf_counter()
    sent, answer, closed = 0, b"", False
    if trailers:
        body = b"%x\r\n%s\r\n0\r\n" % (len(CHAT), CHAT)
        parts = [request_head(url, path, chunked=True), b"\r\n", body, *filler, b"\r\n"]
    else:
        parts = [request_head(url, path), *filler, b"\r\n", CHAT if path.startswith("/v1/") else b""]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.setblocking(False)
        for part in parts:
            view = memoryview(part)
            while view and not answer and not closed:
                try:
                    answer += sock.recv(65536)
                except BlockingIOError:
                    pass
                except OSError:
                    closed = True
                try:
                    count = sock.send(view)
                    sent, view = sent + count, view[count:]
                except BlockingIOError:
                    time.sleep(0.0005)
                except OSError:  # the gateway answered and closed: broken pipe or reset
                    closed = True
            if answer or closed:
                break
        sock.setblocking(True)
        sock.settimeout(30)
        try:
            while b"\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return Answer(status, sent, time.perf_counter() - started)


def normal_request_succeeds(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        headers = {"content-type": "application/json"}
        assert client.post("/v1/chat/completions", content=CHAT, headers=headers).is_success


def refused_early(answer: Answer) -> bool:
    """431, within a fraction of a second, with most of the 16 or 32 MiB never sent."""
    return answer.status == 431 and answer.sent < 8 * MIB and answer.seconds < 1.5


def test_heads_over_the_limit_are_refused_before_they_are_read(served: ServeFactory) -> None:
    """32 MiB of header lines, and one 32 MiB cookie, at a chat request and at the dashboard API; four
    connections of 16 MiB at once; 32 MiB of trailers after a chunked body: each is refused early (431, having
    sent a small part of it); /readyz keeps answering, the gateway's memory stays flat, and a normal request
    on a new connection succeeds after each."""
    with served() as gw:
        paths = ("/v1/chat/completions", "/dashboard/api/overview")
        with peak_rss(gw.process.pid) as rss, watched(gw.url) as waits:
            for path, filler in [(path, filler) for path in paths for filler in (lines, cookie)]:
                answer = send(gw.url, path, filler(32 * MIB))
                assert refused_early(answer), (path, filler.__name__, answer)
                normal_request_succeeds(gw.url)
            answers: list[Answer] = []
            flood = [
                threading.Thread(target=lambda f=f: answers.append(send(gw.url, "/v1/chat/completions", f(16 * MIB))))
                for f in (lines, cookie, lines, cookie)
            ]
            for thread in flood:
                thread.start()
            for thread in flood:
                thread.join(timeout=60)
            assert len(answers) == 4 and all(refused_early(a) for a in answers), answers
            normal_request_succeeds(gw.url)
            for filler in (lines, cookie):
                answer = send(gw.url, "/v1/chat/completions", filler(32 * MIB), trailers=True)
                assert refused_early(answer), ("trailers", filler.__name__, answer)
                normal_request_succeeds(gw.url)
        assert waits and max(waits) < 1.0, max(waits)  # the event loop was never held
        assert rss[1] - rss[0] < 32 * 1024, rss  # kB: no head was buffered whole


def test_a_head_within_the_limit_passes_and_the_limit_is_the_configured_one(served: ServeFactory) -> None:
    """60 KiB of headers (a big cookie and a JWT-sized bearer token, as browsers and SSO proxies send) pass the
    default 64 KiB; with `server.max_header_bytes: 8192`, 10 KiB of headers (1 MiB of trailers, refused a read
    late) is refused and 7 KiB passes, also on a connection kept alive across requests (each is counted anew)."""
    big = {"cookie": "s=" + "c" * 40_000, "x-forwarded-jwt": "j" * 20_000, "content-type": "application/json"}
    with served() as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        for _ in range(3):
            assert client.post("/v1/chat/completions", content=CHAT, headers=big).status_code == 200
    with served({"server": {"max_header_bytes": 8192}}) as gw:
        with httpx.Client(base_url=gw.url, timeout=30) as client:
            for _ in range(10):  # 70 KiB on one connection, 7 KiB a request
                fits = {"cookie": "s=" + "c" * 7_000, "content-type": "application/json"}
                assert client.post("/v1/chat/completions", content=CHAT, headers=fits).status_code == 200
        assert send(gw.url, "/v1/chat/completions", lines(10 * 1024)).status == 431
        assert send(gw.url, "/dashboard/api/overview", cookie(10 * 1024)).status == 431
        assert send(gw.url, "/v1/chat/completions", lines(MIB), trailers=True).status == 431  # over many reads
        assert send(gw.url, "/v1/chat/completions", lines(7 * 1024), trailers=True).status == 200
        normal_request_succeeds(gw.url)


def test_workers_refuse_heads_over_the_limit(served: ServeFactory) -> None:
    """`margin serve --workers 2`: the bound reaches the worker processes (with the configured value)."""
    with served({"server": {"max_header_bytes": 8192}}, extra=["--workers", "2"]) as gw:
        for _ in range(4):  # fresh connections, spread over both workers
            assert send(gw.url, "/v1/chat/completions", lines(10 * 1024)).status == 431
            assert send(gw.url, "/v1/chat/completions", cookie(4 * MIB)).status == 431
            normal_request_succeeds(gw.url)
