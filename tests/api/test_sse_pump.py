"""The SSE responder writes each event as soon as it is framed, joining only events already in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from margin.api.responses import SSEResponse


class _Stream:
    """A MeteredStream stand-in: frames with the backend's `ready` flag after each."""

    def __init__(self, frames: list[tuple[bytes, bool]]) -> None:
        self.frames = frames
        self.ready = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        for data, ready in self.frames:
            self.ready = ready
            yield data
        self.ready = False


async def _bodies(frames: list[tuple[bytes, bool]]) -> list[bytes]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    ctx = SimpleNamespace(client_wait_s=0.0)
    responder = SSEResponse(ctx, _Stream(frames), services=None)  # type: ignore[arg-type]
    await responder._pump(send)
    assert all(m["more_body"] for m in sent)
    return [m["body"] for m in sent]


async def test_ready_events_are_joined_to_the_one_before() -> None:
    frames = [(b"a", True), (b"b", True), (b"c", False), (b"d", False), (b"e", True), (b"f", False)]
    assert await _bodies(frames) == [b"abc", b"d", b"ef"]


async def test_events_not_ready_go_out_one_by_one() -> None:
    frames = [(b"a", False), (b"b", False), (b"c", False)]
    assert await _bodies(frames) == [b"a", b"b", b"c"]


async def test_held_events_are_written_when_the_stream_ends() -> None:
    assert await _bodies([(b"a", False), (b"b", True), (b"c", True)]) == [b"a", b"bc"]
    assert await _bodies([]) == []


async def test_an_empty_release_frame_flushes_without_sending_an_empty_body() -> None:
    assert await _bodies([(b"a", True), (b"", False), (b"c", False)]) == [b"a", b"c"]
    assert await _bodies([(b"", False)]) == []
