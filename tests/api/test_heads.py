"""The protocol's bound on header sections, read by read (the attacks on a running gateway are in
tests/security/test_edge_heads.py): what is refused, and that heads within the limit pass however they are cut
into reads, on keep-alive and pipelined connections."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from margin.api.heads import BoundedHttpToolsProtocol, ConnectionLimits

LIMIT = 8192


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope: Any, receive: Any, send: Any) -> None:
    size = 0
    while (message := await receive())["type"] == "http.request":
        size += len(message["body"])
        if not message.get("more_body"):
            break
    body = b"%d %d" % (len(scope["headers"]), size)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def exchange(reads: list[bytes]) -> Transport:
    """Feed the reads to a fresh connection (letting the app run after each); what it wrote."""
    config = Config(app, http=BoundedHttpToolsProtocol, lifespan="off", access_log=False)
    limits = ConnectionLimits(max_header_bytes=LIMIT)
    protocol = BoundedHttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop(), limits=limits)
    transport = Transport()
    protocol.connection_made(transport)
    for data in reads:
        if transport.closed:
            break
        protocol.data_received(data)
        for _ in range(5):
            await asyncio.sleep(0)
    for _ in range(100):  # pipelined requests run one after the other
        await asyncio.sleep(0)
    return transport


def head(
    lines: int, line: bytes = b"x-a: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n"
) -> bytes:
    return b"GET / HTTP/1.1\r\nhost: x\r\n" + line * lines + b"\r\n"


def cut(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def test_heads_within_the_limit_pass_however_they_are_read() -> None:
    fits = head(90)  # ~7.7 KB
    assert len(fits) < LIMIT
    for size in (1, 100, 4096, len(fits)):
        written = (await exchange(cut(fits, size))).written
        assert written.startswith(b"HTTP/1.1 200 ") and written.endswith(b"91 0"), size


async def test_heads_over_the_limit_get_431_in_one_read_or_many() -> None:
    over = head(110)  # ~9.4 KB
    cookie = b"GET / HTTP/1.1\r\ncookie: " + b"c" * 20_000 + b"\r\n\r\n"
    for data in (over, cookie):
        for size in (100, 4096, len(data)):
            transport = await exchange(cut(data, size))
            assert transport.written.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), size
            assert transport.closed


async def test_each_request_of_a_connection_has_its_own_limit() -> None:
    """Keep-alive and pipelined: 10 heads of ~7.7 KB (77 KB in all) in one read, or each after a 200 KB body."""
    fits = head(90)
    assert (await exchange([fits * 10])).written.count(b"HTTP/1.1 200 ") == 10
    body = b"b" * 200_000
    post = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    written = (await exchange(cut((post + fits) * 3, 65536))).written
    assert written.count(b"HTTP/1.1 200 ") == 6 and b"431" not in written


async def test_trailers_over_the_limit_are_refused() -> None:
    chunked = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
    few = chunked + b"x-t: 1\r\n" * 100 + b"\r\n"
    assert (await exchange(cut(few, 512))).written.startswith(b"HTTP/1.1 200 ")
    many = chunked + b"x-t: 1\r\n" * 20_000 + b"\r\n"
    one = chunked + b"x-t: " + b"t" * 40_000 + b"\r\n\r\n"
    for data in (many, one):
        transport = await exchange(cut(data, 4096))
        assert transport.written.startswith(b"HTTP/1.1 431 ") and transport.closed


class SlowApp:
    """Reads nothing for 2.8 s (its body waits in uvicorn, reading paused past 64 KiB), then all of it; `reading`
    is set as it starts."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(2.8)
        self.reading.set()
        await app(scope, receive, send)


async def connect(limits: ConnectionLimits, asgi: Any = app) -> tuple[BoundedHttpToolsProtocol, Transport]:
    config = Config(asgi, http=BoundedHttpToolsProtocol, lifespan="off", access_log=False)
    config.load()
    protocol = BoundedHttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop(), limits=limits)
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def test_a_request_in_one_read_leaves_no_deadline_armed() -> None:
    """The deadlines cost a request that arrives whole nothing but a few checks: no timer is left armed."""
    protocol, transport = await connect(ConnectionLimits())
    assert protocol.deadline_for == "head"  # a fresh connection has until its first head
    protocol.data_received(head(1))
    assert protocol.deadline is None
    await asyncio.sleep(0.05)
    assert transport.written.startswith(b"HTTP/1.1 200 ")
    protocol.data_received(head(1) * 3)  # kept alive, pipelined
    assert protocol.deadline is None


async def test_a_body_the_app_has_not_read_yet_is_not_the_clients_delay() -> None:
    """A 1 s body deadline and an app that reads its body 2.8 s late; the client sends the rest 0.5 s after the
    app asks for it. Two ways: a 200 KB body sent half at once (uvicorn pauses reading past 64 KiB), and one with
    `expect: 100-continue`, sent once the `100 Continue` came. Neither wait is the client's: both get 200. (The
    deadline re-armed while the app waited falls at 3 s, 0.2 s after the app asks: it must start again then.
    The margins are 0.5 s either way; a 50 ms one lost a race on a loaded CI box.)"""
    body = b"b" * 200_000
    post = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)

    async def paused() -> Transport:
        slow = SlowApp()
        protocol, transport = await connect(ConnectionLimits(body_timeout_s=1.0), slow)
        protocol.data_received(post + body[:100_000])
        await slow.reading.wait()
        await asyncio.sleep(0.5)
        protocol.data_received(body[100_000:])
        return transport

    async def continued() -> Transport:
        slow = SlowApp()
        protocol, transport = await connect(ConnectionLimits(body_timeout_s=1.0), slow)
        protocol.data_received(post.replace(b"\r\n\r\n", b"\r\nexpect: 100-continue\r\n\r\n"))
        await slow.reading.wait()
        await asyncio.sleep(0)
        assert transport.written.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), transport.written[:80]
        await asyncio.sleep(0.5)
        protocol.data_received(body)
        return transport

    for transport in await asyncio.gather(paused(), continued()):
        await asyncio.sleep(0.1)
        assert b"HTTP/1.1 200 " in transport.written and not transport.closed, transport.written[:120]


async def test_a_stalled_body_and_a_late_head_are_answered_408() -> None:
    protocol, transport = await connect(ConnectionLimits(head_timeout_s=0.1, body_timeout_s=0.1))
    protocol.data_received(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
    await asyncio.sleep(0.2)
    assert transport.written.startswith(b"HTTP/1.1 408 ") and transport.closed
    protocol, transport = await connect(ConnectionLimits(head_timeout_s=0.1))
    protocol.data_received(b"GET / HTT")
    await asyncio.sleep(0.2)
    assert transport.written.startswith(b"HTTP/1.1 408 ") and transport.closed


def test_serve_raises_its_open_files_limit_to_what_max_connections_needs() -> None:
    """In a child process with a soft limit of 256: 100 connections need 456 files, so the soft limit is raised
    (to the hard limit at most); a need already met leaves it alone."""
    script = (
        "import resource; from margin.serve import open_files;"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE);"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard));"
        "print(open_files(100), resource.getrlimit(resource.RLIMIT_NOFILE)[0], open_files(10), hard)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    raised, now, untouched, hard = (int(x) for x in out.stdout.split())
    wanted = min(456, hard) if hard >= 0 else 456
    assert raised == now == wanted and untouched == now


async def test_a_whole_answer_leaves_in_one_write_and_a_head_alone_at_the_end_of_the_step() -> None:
    """`Coalescing`: a head and the body written in the same event-loop step go out in one writev; a head with
    nothing after it (a stream's, before its first event) goes out at the end of the step; a close sends what
    is held first; order is kept."""
    from margin.api.heads import Coalescing

    calls: list[list[bytes]] = []

    class Recording(Transport):
        def write(self, data: bytes | bytearray | memoryview) -> None:
            calls.append([bytes(data)])

        def writelines(self, parts: Any) -> None:
            calls.append([bytes(part) for part in parts])

    raw = Recording()
    transport = Coalescing(raw, asyncio.get_running_loop())
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    transport.write(head)
    assert calls == []
    transport.write(b"{}")
    assert calls == [[head, b"{}"]]
    transport.write(head)  # a stream's head: held until the end of the step
    assert len(calls) == 1
    await asyncio.sleep(0)
    assert calls[-1] == [head] and len(calls) == 2
    transport.write(b"data: 1\n\n")  # not a head: at once
    assert calls[-1] == [b"data: 1\n\n"]
    transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\ntoo large")
    transport.close()
    assert calls[-1] == [b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\ntoo large"] and raw.closed
    await asyncio.sleep(0)  # the step's flush finds nothing left
    assert len(calls) == 4
