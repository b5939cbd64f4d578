"""A fault-injecting OpenAI-compatible upstream: a real HTTP/1.1 server (asyncio streams, no framework), so
faults happen on the wire the way a broken upstream makes them: refused statuses, silence, a connection cut
with a TCP reset, bodies that are not JSON, streams whose events are not.

    python -m tests.fault_upstream [--port 0]     # prints `port N` once listening

The fault comes from the path: a backend's `base_url` is `http://127.0.0.1:N/<mode>/<tag>/v1`, where `tag` is
any name (requests are counted per `<mode>/<tag>`, see `GET /stats`) and `mode` is `name[,key=value…]`:

    ok                          a normal answer (JSON, or SSE: 3 content events, finish, usage, [DONE])
    status,code=503             that HTTP status with an OpenAI error body
    status,code=429,after=1     429 with `Retry-After: 1`
    slow,delay=5                nothing at all for `delay` seconds, then a normal answer
    slowbody,delay=5            headers at once, then nothing for `delay` seconds, then the body or events
    many,events=400,size=2000   a healthy stream of 400 content events of 2,000 characters each
    stall,events=2              headers and 2 events (JSON: half the body), then silence until the client leaves
    reset,events=2              headers and 2 events (JSON: half the body), then a TCP reset
    badjson                     200 with a body that is not JSON (streams: a first event that is not JSON)
    badsse,events=2             2 good events, then `data: {not json`
    badbrace                    like badjson, but the body (or first event) is braced: `{"id": oops}`
    errorchunk,events=2         streams: 2 good events, then OpenRouter's mid-stream error (an `error` object
                                beside `choices` whose finish_reason is `error`), then [DONE]
    odd                         answers of odd shape: `choices` that are not objects (JSON: with usage;
                                SSE: 2 good events, then odd ones, a finish, and no usage)
    huge,bytes=N                an answer of N bytes: JSON, one valid object sent chunked; SSE, 2 events,
                                then events with empty content up to N bytes
    huge,bytes=N,declare=1      JSON: the same object with its Content-Length
    huge,bytes=N,gzip=1         JSON: the object gzipped (`Content-Encoding: gzip`), declared at its
                                compressed size (a few hundred KB for a 256 MiB object: a decompression bomb)
    huge,bytes=N,line=1         SSE: 2 events, then one line of N bytes that never ends
    redirect,code=307           that status with `Location:` this server's `/ok/redirected/v1/…` (counted there if
                                followed)
    errorbody                   200 with an OpenAI error object instead of an answer (streams too: a JSON body,
                                no SSE event)
    errorbody,usage=40:30       the same, with the usage it billed beside the error (40 prompt, 30 completion
                                tokens), as OpenRouter reports a failed generation
    empty                       streams: headers, then `data: [DONE]` and no event (JSON: a normal answer)
    cached                      usage whose cached_tokens (10^6) exceed its prompt_tokens (5), JSON and SSE
    inflated                    usage of 10^9 prompt and 10^9 completion tokens for a 3-word answer, JSON and SSE
    deep,depth=N                an answer with a value nested N levels deep (default 300, past what orjson
                                writes) in its top level, its message (delta) and its usage, JSON and SSE
    any of them with times=N    the fault for the first N requests of that path only, then normal answers

`/dyn/<tag>/v1` answers in the mode last set with `POST /mode/<tag>` (body: the mode string). A refused
connection needs no server: point a backend at a port nobody listens on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import socket
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

HEAD_LIMIT = 64 * 1024
RESET_GRACE_S = 0.3  # lets the events sent before a reset reach the client's reader before the RST


@dataclass
class Mode:
    name: str
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Mode:
        name, *pairs = text.split(",")
        return cls(name, dict(pair.split("=", 1) for pair in pairs if "=" in pair))

    def number(self, key: str, default: float) -> float:
        return float(self.params.get(key, default))


@dataclass
class State:
    counts: Counter[str] = field(default_factory=Counter)
    dynamic: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    path: str
    body: dict[str, Any]


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    raw = await reader.readexactly(int(headers.get("content-length") or 0))
    try:
        body = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        body = {}
    return Request(method, path, body if isinstance(body, dict) else {})


def _head(status: int, content_type: str, *, length: int | None = None, extra: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"content-type: {content_type}", "connection: close"]
    lines.append(f"content-length: {length}" if length is not None else "transfer-encoding: chunked")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
CACHED_USAGE = {**USAGE, "prompt_tokens_details": {"cached_tokens": 1_000_000}}  # more cached than prompt tokens
INFLATED_USAGE = {"prompt_tokens": 10**9, "completion_tokens": 10**9, "total_tokens": 2 * 10**9}
ERROR_BODY = {"error": {"message": "quota of sk-upstream-SECRET exceeded", "type": "x", "code": "insufficient_quota"}}


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _with(value: dict[str, Any], nested: Any) -> dict[str, Any]:
    """`value` with a key `x` of `nested` (None: as it is)."""
    return value if nested is None else {**value, "x": nested}


def answer(body: dict[str, Any], usage: dict[str, Any] = USAGE, nested: Any = None) -> bytes:
    message = _with({"role": "assistant", "content": "a b c"}, nested)
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    payload = {"id": "f-1", "object": "chat.completion", "created": 0, "model": body.get("model")}
    payload = _with({**payload, "usage": _with(usage, nested)}, nested)
    return json.dumps({**payload, "choices": [choice]}).encode()


def events(body: dict[str, Any], usage: dict[str, Any] = USAGE, nested: Any = None) -> list[bytes]:
    base = _with({"id": "f-1", "object": "chat.completion.chunk", "created": 0, "model": body.get("model")}, nested)
    delta = [_with({"content": word}, nested) for word in "abc"]
    out = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in delta]
    out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        out.append({**base, "choices": [], "usage": _with(usage, nested)})
    return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in out] + [b"data: [DONE]\n\n"]


def many_events(body: dict[str, Any], count: int, size: int) -> list[bytes]:
    base = {"id": "f-1", "object": "chat.completion.chunk", "created": 0, "model": body.get("model")}
    piece = {**base, "choices": [{"index": 0, "delta": {"content": "x" * size}, "finish_reason": None}]}
    finish = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in [*[piece] * count, finish]] + [b"data: [DONE]\n\n"]


PIECE = 64 * 1024


def _huge_json(size: int) -> Iterator[bytes]:
    """A valid JSON object of `size` bytes, in pieces (made as they are taken)."""
    head, tail = b'{"id": "f-1", "pad": "', b'"}'
    pad = size - len(head) - len(tail)
    yield head
    for at in range(0, pad, PIECE):
        yield b"0" * min(PIECE, pad - at)
    yield tail


@functools.cache
def _gzipped(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    return b"".join(packer.compress(piece) for piece in _huge_json(size)) + packer.flush()


async def _huge(mode: Mode, body: dict[str, Any], stream: bool, writer: asyncio.StreamWriter) -> None:
    """`huge`: written piece by piece, each drained (this server never holds the answer, and stops when the
    gateway drops the connection)."""
    size, flag = int(mode.number("bytes", 4 << 20)), mode.params.get
    pieces: Iterable[bytes]
    if not stream and flag("gzip") == "1":
        data = _gzipped(size)
        writer.write(_head(200, "application/json", length=len(data), extra={"content-encoding": "gzip"}) + data)
        return
    if not stream and flag("declare") == "1":
        writer.write(_head(200, "application/json", length=size))
        pieces, end = _huge_json(size), b""
    elif not stream:
        writer.write(_head(200, "application/json"))
        pieces, end = map(_chunk, _huge_json(size)), b"0\r\n\r\n"
    else:
        writer.write(_head(200, "text/event-stream") + b"".join(_chunk(e) for e in events(body)[:2]))
        if flag("line") == "1":  # never ends
            pieces, end = [_chunk(b'data: {"pad": "'), *[_chunk(b"0" * PIECE)] * (size // PIECE)], b""
        else:
            empty = b"data: " + json.dumps({"id": "f-1", "choices": [{"index": 0, "delta": {"content": ""}}]}).encode()
            piece = _chunk(b"".join(empty + b"\n\n" for _ in range(PIECE // (len(empty) + 2))))
            pieces, end = [piece] * (size // PIECE), b"0\r\n\r\n"
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
    writer.write(end)


ODD_CHOICES: tuple[Any, ...] = (["x", 5, {"message": 3}], 5, "abc", {"a": 1}, [{"delta": 3}], [None])


def _odd(body: dict[str, Any], stream: bool, writer: asyncio.StreamWriter) -> None:
    if not stream:
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        data = json.dumps({"id": "f-1", "object": "chat.completion", "choices": ODD_CHOICES[0], "usage": usage})
        writer.write(_head(200, "application/json", length=len(data)) + data.encode())
        return
    good = events({**body, "stream_options": {}})  # a, b, c, finish, [DONE]: no usage
    odd = [b"data: " + json.dumps({"id": "f-1", "choices": choices}).encode() + b"\n\n" for choices in ODD_CHOICES]
    writer.write(_head(200, "text/event-stream") + b"".join(map(_chunk, [*good[:2], *odd, *good[3:]])) + b"0\r\n\r\n")


def _hostile(mode: Mode, body: dict[str, Any], stream: bool, writer: asyncio.StreamWriter) -> bool:
    """`redirect`, `errorbody`, `empty`, `cached`, `inflated`: answers shaped to fool the gateway; False for
    other modes."""
    if mode.name == "redirect":
        where = {"location": "/ok/redirected/v1/chat/completions"}
        writer.write(_head(int(mode.number("code", 307)), "application/json", length=0, extra=where))
    elif mode.name == "errorbody":
        billed = mode.params.get("usage")  # `P:C`: the usage an upstream bills beside its error (OpenRouter's)
        prompt, _, completion = (billed or "").partition(":")
        beside = {"usage": {"prompt_tokens": int(prompt), "completion_tokens": int(completion)}} if billed else {}
        data = json.dumps({**ERROR_BODY, **beside}).encode()
        writer.write(_head(200, "application/json", length=len(data)) + data)
    elif mode.name == "empty" and stream:
        writer.write(_head(200, "text/event-stream") + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    elif mode.name in ("cached", "inflated", "deep"):
        usage = CACHED_USAGE if mode.name == "cached" else INFLATED_USAGE if mode.name == "inflated" else USAGE
        nested = _nested(int(mode.number("depth", 300))) if mode.name == "deep" else None
        data = b"".join(events(body, usage, nested)) if stream else answer(body, usage, nested)
        writer.write(_head(200, "text/event-stream" if stream else "application/json", length=len(data)) + data)
    else:
        return False
    return True


async def _until_closed(reader: asyncio.StreamReader, limit_s: float = 120) -> None:
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(limit_s):
            while await reader.read(4096):
                pass


async def _reset(writer: asyncio.StreamWriter) -> None:
    await writer.drain()
    await asyncio.sleep(RESET_GRACE_S)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def respond(mode: Mode, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Write the answer `mode` asks for (the normal one for `ok`)."""
    stream = bool(request.body.get("stream"))
    name = mode.name
    if name == "status":
        code = int(mode.number("code", 500))
        extra = {"retry-after": mode.params["after"]} if "after" in mode.params else None
        error = json.dumps({"error": {"message": f"scripted {code}", "type": "server_error", "code": None}}).encode()
        writer.write(_head(code, "application/json", length=len(error), extra=extra) + error)
        return
    if name == "slow":
        await asyncio.sleep(mode.number("delay", 5))
    if name == "huge":
        await _huge(mode, request.body, stream, writer)
        return
    if name == "odd":
        _odd(request.body, stream, writer)
        return
    if _hostile(mode, request.body, stream, writer):
        return
    if not stream:
        data = b'{"id": "f-1", "choices": [' if name == "badjson" else answer(request.body)
        data = b'{"id": oops}' if name == "badbrace" else data
        if name == "slowbody":
            writer.write(_head(200, "application/json", length=len(data)))
            await writer.drain()
            await asyncio.sleep(mode.number("delay", 5))
        if name in ("stall", "reset"):
            writer.write(_head(200, "application/json", length=len(data)) + data[: len(data) // 2])
            await (_until_closed(reader) if name == "stall" else _reset(writer))
            return
        writer.write(_head(200, "application/json", length=len(data)) + data)
        return
    sent = events(request.body)
    keep = int(mode.number("events", 2))
    writer.write(_head(200, "text/event-stream"))
    if name == "slowbody":
        await writer.drain()
        await asyncio.sleep(mode.number("delay", 5))
    if name == "badjson":
        sent = [b"data: {not json\n\n"]
    elif name == "badbrace":
        sent = [b'data: {"id": oops}\n\n']
    elif name == "badsse":
        sent = [*sent[:keep], b"data: {not json\n\n"]
    elif name == "errorchunk":
        choices = [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]
        failed = {"id": "f-1", "object": "chat.completion.chunk", **ERROR_BODY, "choices": choices}
        sent = [*sent[:keep], b"data: " + json.dumps(failed).encode() + b"\n\n", sent[-1]]
    elif name == "many":
        sent = many_events(request.body, int(mode.number("events", 400)), int(mode.number("size", 2000)))
    elif name in ("stall", "reset"):
        writer.write(b"".join(_chunk(e) for e in sent[:keep]))
        await (_until_closed(reader) if name == "stall" else _reset(writer))
        return
    writer.write(b"".join(_chunk(e) for e in sent) + b"0\r\n\r\n")


class FaultServer:
    def __init__(self) -> None:
        self.state = State()

    def _mode(self, path: str) -> tuple[str, Mode] | None:
        parts = path.split("/")
        if len(parts) < 5 or parts[3] != "v1":
            return None
        key = f"{parts[1]}/{parts[2]}"
        text = self.state.dynamic.get(parts[2], "ok") if parts[1] == "dyn" else parts[1]
        mode = Mode.parse(text)
        self.state.counts[key] += 1
        if "times" in mode.params and self.state.counts[key] > int(mode.params["times"]):
            mode = Mode("ok")
        return key, mode

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await read_request(reader)
            if request is None:
                return
            if request.method == "GET" and request.path == "/stats":
                data = json.dumps(dict(self.state.counts)).encode()
                writer.write(_head(200, "application/json", length=len(data)) + data)
            elif request.method == "POST" and request.path.startswith("/mode/"):
                self.state.dynamic[request.path.removeprefix("/mode/")] = str(request.body.get("mode", "ok"))
                writer.write(_head(204, "application/json", length=0))
            elif (found := self._mode(request.path)) is not None:
                await respond(found[1], request, reader, writer)
            else:
                writer.write(_head(404, "application/json", length=2) + b"{}")
            await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(FaultServer().handle, "127.0.0.1", port, limit=HEAD_LIMIT)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
