"""The protocol's bound on header sections, read by read (the attacks on a running gateway are in
tests/security/test_edge_heads.py): what is refused, and that heads within the limit pass however they are cut
into reads, on keep-alive and pipelined connections."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from margin.api.heads import BoundedHttpToolsProtocol

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
    config = Config(
        app, http=BoundedHttpToolsProtocol, h11_max_incomplete_event_size=LIMIT, lifespan="off", access_log=False
    )
    protocol = BoundedHttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop())
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
