"""MeteredStream's `ready` flag: set while the backend holds the next event, cleared before any wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from margin.backends.base import Chunk, Usage
from margin.pipeline.call import MeteredStream
from margin.pipeline.context import RequestContext
from margin.protocol import Endpoint, parse_request


def _ctx(include_usage: bool) -> RequestContext:
    raw = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    if include_usage:
        raw["stream_options"] = {"include_usage": True}
    return RequestContext("r1", Endpoint.CHAT, {}, raw, parse_request(Endpoint.CHAT, raw))


def _content(text: str, more: bool) -> Chunk:
    payload = {"choices": [{"index": 0, "delta": {"content": text}}]}
    return Chunk(payload=payload, raw=b'{"c":"%s"}' % text.encode(), text=text, more=more)


USAGE = Chunk(payload={"choices": [], "usage": {}}, raw=b'{"u":1}', usage=Usage(1, 2), more=False)


async def _backend(log: list[str]) -> AsyncIterator[Chunk]:
    yield _content("a", more=True)
    yield _content("b", more=True)
    yield USAGE  # the last event of this read
    log.append("waiting for the network")
    await asyncio.sleep(0.01)
    yield _content("c", more=False)


async def _frames(include_usage: bool) -> list[tuple[bytes, bool, list[str]]]:
    log: list[str] = []
    stream = MeteredStream(_ctx(include_usage), _backend(log), lambda: None)
    return [(frame, stream.ready, list(log)) async for frame in stream]


async def test_a_dropped_event_releases_the_held_burst_before_waiting() -> None:
    frames = await _frames(include_usage=False)  # the usage event is not forwarded
    assert [(f, ready) for f, ready, _ in frames] == [
        (b'data: {"c":"a"}\n\n', True),
        (b'data: {"c":"b"}\n\n', True),
        (b"", False),  # nothing to send, but the responder must write a and b now
        (b'data: {"c":"c"}\n\n', False),
    ]
    assert frames[2][2] == []  # released before the stream waited for the network


async def test_forwarded_events_end_the_burst_themselves() -> None:
    frames = await _frames(include_usage=True)
    assert [(f, ready) for f, ready, _ in frames] == [
        (b'data: {"c":"a"}\n\n', True),
        (b'data: {"c":"b"}\n\n', True),
        (b'data: {"u":1}\n\n', False),
        (b'data: {"c":"c"}\n\n', False),
    ]
