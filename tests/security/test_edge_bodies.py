"""Issue 13 §2 (first bullet): one body reader with a limit for every route. The attack streams a chunked
body from /dev/zero (it never ends unless the gateway stops it) at each route that read bodies unbounded."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

import httpx

from tests.helpers import rss_kb
from tests.security.conftest import ServeFactory

CHUNK = b"0" * 65536
LIMIT = 64 * 1024
FLOOD = 256 * 1024 * 1024  # what the attacker is willing to send


@dataclass
class Flood:
    status: int
    sent: int


def chunked_flood(url: str, path: str, headers: dict[str, str], total: int = FLOOD) -> Flood:
    """POST a chunked body of up to `total` bytes, stopping when the gateway answers; its status and the
    bytes sent by then."""
    host, port = url.removeprefix("http://").split(":")
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        sock.setblocking(False)
        frame = b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n"
        answer = b""
        while sent < total:
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            except OSError:
                break
            if answer:
                break
            try:
                sent += sock.send(frame)
            except BlockingIOError:
                threading.Event().wait(0.001)
            except OSError:  # the gateway closed the connection after answering
                break
        sock.settimeout(30)
        sock.setblocking(True)
        while b"\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1") else 0
    return Flood(status, sent)


def test_every_route_reads_bodies_with_a_limit(served: ServeFactory) -> None:
    """`curl -H 'Transfer-Encoding: chunked' -T /dev/zero` at /dashboard/login, /v1/margin/feedback,
    /admin/* and /v1/chat/completions: each stops at its limit with 413, memory stays flat, and another
    request is answered meanwhile."""
    overrides = {"server": {"max_body_bytes": LIMIT}}
    with served(overrides, keys={"admin": ["--admin"]}) as gw:
        json_headers = {"content-type": "application/json", "authorization": f"Bearer {gw.keys['admin']}"}
        form = {"content-type": "application/x-www-form-urlencoded", "origin": gw.url}
        targets = [
            ("/dashboard/login", form),
            ("/v1/margin/feedback", json_headers),
            ("/admin/keys", json_headers),
            ("/admin/budgets", json_headers),
            ("/v1/chat/completions", json_headers),
        ]
        before = rss_kb(gw.process.pid)
        for path, headers in targets:
            result: list[Flood] = []
            attack = threading.Thread(
                target=lambda p=path, h=headers, out=result: out.append(chunked_flood(gw.url, p, h))
            )
            attack.start()
            with httpx.Client(base_url=gw.url, timeout=10) as other:
                assert other.get("/readyz").status_code == 200  # the gateway still answers meanwhile
            attack.join(timeout=120)
            assert result and result[0].status == 413, (path, result)
            assert result[0].sent < 32 * 1024 * 1024, (path, result)  # stopped long before the 256 MB
        assert rss_kb(gw.process.pid) - before < 64 * 1024  # no body was buffered whole
        assert gw.cli("keys", "list", "--json").stdout.count('"id"') == 1  # nothing was created
