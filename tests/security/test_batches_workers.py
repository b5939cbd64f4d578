"""The per-key caps on concurrent file downloads and uploads, attacked through `margin serve --workers 2`: they
were counted per process, so a key whose connections landed on both workers got twice its cap. Now their
running places are leases in the Redis the workers share (the supervisor's embedded one here): a key holding
its two places, one on each worker, is refused further downloads on both workers (429) and its further
uploads wait unread, and once its two end it is admitted again."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import orjson

from tests.security.conftest import Served, ServeFactory
from tests.security.waiting import all_sent, stalled_upload, wait_for

KEYS = {"admin": ["--admin"], "a": ["--team", "t"], "b": ["--team", "t"]}
LIMITS = {"batches": {"max_file_bytes": 40 << 20, "max_lines": 50_000, "objective": "asap"}}


def _line(custom_id: str, filler: str = "hi") -> bytes:
    body = {"model": "fake-chat", "messages": [{"role": "user", "content": filler}]}
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def _upload(client: httpx.Client, content: bytes) -> httpx.Response:
    return client.post("/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"})


def _request(gw: Served, method: str, path: str, key: str) -> bytes:
    host = gw.url.removeprefix("http://")
    return f"{method} {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {key}\r\n\r\n".encode()


def _pid(sock: socket.socket, gw: Served) -> int:
    """The pid of the worker that answers this connection (an operator's /healthz; the connection stays open)."""
    sock.sendall(_request(gw, "GET", "/healthz", gw.keys["admin"]))
    got = b""
    while b"\r\n\r\n" not in got:
        got += sock.recv(65536)
    head, _, body = got.partition(b"\r\n\r\n")
    fields = dict(line.lower().split(b":", 1) for line in head.split(b"\r\n")[1:])
    length = int(fields[b"content-length"])
    while len(body) < length:
        body += sock.recv(65536)
    return int(json.loads(body)["pid"])


def _one_per_worker(gw: Served, stack: ExitStack) -> list[socket.socket]:
    """Two raw connections, each answered by another worker (fresh ones until the kernel has spread them)."""
    host, port = gw.url.removeprefix("http://").split(":")
    kept: dict[int, socket.socket] = {}
    deadline = time.monotonic() + 60
    while len(kept) < 2 and time.monotonic() < deadline:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.settimeout(30)
        sock.connect((host, int(port)))
        pid = _pid(sock, gw)
        if pid in kept:
            sock.close()
        else:
            kept[pid] = stack.enter_context(sock)
    assert len(kept) == 2, "the connections never reached both workers"
    return list(kept.values())


def _fresh_codes(gw: Served, method: str, path: str, count: int, **kwargs: Any) -> tuple[set[int], list[int]]:
    """`count` requests of key a, each on a new connection (the kernel spreads them over the workers): the
    workers that answered, and the status of each (a download's body is not read)."""
    pids: set[int] = set()
    codes: list[int] = []
    admin = {"authorization": f"Bearer {gw.keys['admin']}"}
    deadline = time.monotonic() + 60  # the kernel's spread is not even: one worker may take many in a row
    while len(codes) < count or len(pids) < 2:
        with gw.client(gw.keys["a"], timeout=60) as fresh:  # one keep-alive connection: one worker answers both
            pids.add(fresh.get("/healthz", headers=admin).json()["pid"])
            with fresh.stream(method, path, **kwargs) as answer:
                codes.append(answer.status_code)
        assert time.monotonic() < deadline, "the requests never reached both workers"
    return pids, codes


def _both_workers(gw: Served) -> None:
    """Wait until both workers answer (the second may still be starting when the first does)."""
    seen: set[int] = set()
    admin = {"authorization": f"Bearer {gw.keys['admin']}"}

    def both() -> bool:
        with gw.client() as fresh:
            seen.add(fresh.get("/healthz", headers=admin).json()["pid"])
        return len(seen) == 2

    wait_for(both, "both workers", timeout_s=60)


def test_a_key_downloads_two_files_at_a_time_across_workers(served: ServeFactory) -> None:
    """Two downloads whose clients read nothing, one on each worker, hold the key's two places: every further
    download of the key, on either worker, is refused at once (429); per-process places let one more through
    on each worker. Another key is not held up; once the two are closed the key downloads again."""
    filler = "x" * 900
    content = b"".join(_line(f"k{i}", filler) + b"\n" for i in range(24_000))  # 24 MB: more than the sockets hold
    with served(LIMITS, keys=KEYS, extra=["--workers", "2"]) as gw, gw.client(gw.keys["a"], timeout=120) as a:
        _both_workers(gw)
        path = f"/v1/files/{_upload(a, content).json()['id']}/content"
        with ExitStack() as stack:
            for sock in _one_per_worker(gw, stack):
                sock.sendall(_request(gw, "GET", path, gw.keys["a"]))
                assert sock.recv(12) == b"HTTP/1.1 200"  # being sent (its place taken); read no further
            pids, codes = _fresh_codes(gw, "GET", path, 12)
            assert len(pids) == 2 and codes == [429] * len(codes), codes
            with gw.client(gw.keys["b"], timeout=60) as b:
                own = _upload(b, _line("b") + b"\n").json()["id"]
                assert b.get(f"/v1/files/{own}/content").status_code == 200  # another key's: not held up
        # the two were closed: their places come back, on both workers (two at a time: each answer is closed
        # unread, and its place may reach Redis a moment after the next request)
        wait_for(lambda: set(_fresh_codes(gw, "GET", path, 2)[1]) == {200}, "the key's places back", 30)


@contextmanager
def _slow_uploads(gw: Served, release: threading.Event, codes: list[int]) -> Iterator[None]:
    """Two uploads of key a, one on each worker, whose bodies stop after their first part until `release`;
    the block runs once both have sent all but their ends (it ran 1.5 s after they were started, a fixed time
    a loaded machine may pass)."""
    sent = threading.Semaphore(0)
    headers = {"content-type": "multipart/form-data; boundary=b"}
    admin = {"authorization": f"Bearer {gw.keys['admin']}"}
    clients: dict[int, httpx.Client] = {}
    threads: list[threading.Thread] = []
    with ExitStack() as stack:
        deadline = time.monotonic() + 60
        while len(clients) < 2 and time.monotonic() < deadline:
            client = stack.enter_context(gw.client(gw.keys["a"], timeout=90))  # one connection, one worker
            clients.setdefault(client.get("/healthz", headers=admin).json()["pid"], client)
        assert len(clients) == 2, "the connections never reached both workers"
        for client in clients.values():

            def post(client: httpx.Client = client) -> None:
                body = stalled_upload(_line("one"), release, sent)
                codes.append(client.post("/v1/files", content=body, headers=headers).status_code)

            threads.append(threading.Thread(target=post))
            threads[-1].start()
        try:
            all_sent(sent, len(threads))  # both bodies are being read: the key's two places are taken
            yield
        finally:
            release.set()
            for thread in threads:
                thread.join(60)


def test_a_key_uploads_two_files_at_a_time_across_workers(served: ServeFactory) -> None:
    """Two uploads whose bodies stall, one on each worker, hold the key's two places: a further upload of the
    key, on either worker, waits unread instead of being stored (per-process places stored one at once on
    each worker); once the two end it is stored, and so are theirs."""
    release, codes = threading.Event(), list[int]()
    with served(LIMITS, keys=KEYS, extra=["--workers", "2"]) as gw:
        _both_workers(gw)
        with _slow_uploads(gw, release, codes):
            waiting: list[int] = []
            late = [threading.Thread(target=lambda: waiting.append(_late_upload(gw))) for _ in range(4)]
            for thread in late:
                thread.start()
            time.sleep(3)
            assert waiting == [], waiting  # none stored (or refused) while the two hold the key's places
            with gw.client(gw.keys["b"]) as b:
                assert _upload(b, _line("b")).status_code == 200  # another key's: not held up
        for thread in late:
            thread.join(60)
        assert codes == [200, 200] and waiting == [200] * 4, (codes, waiting)


def _late_upload(gw: Served) -> int:
    with gw.client(gw.keys["a"], timeout=60) as client:
        return _upload(client, _line("late")).status_code
