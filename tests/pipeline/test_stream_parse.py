"""A stream's parts are looked at for what a cache hit cannot replay (`Delivery.unreplayed`: citations, images,
audio) in a worker thread once it delivered more than PARSE_INLINE_BYTES (every event is read: on the event loop
a 128 MiB stream of small events held every other request for seconds), on the loop below it; either way an
unreplayable part anywhere in it is found. Over real HTTP: tests/cache/test_unreplayed_parts.py."""

from __future__ import annotations

import threading

import pytest

from margin.pipeline import stream
from margin.pipeline.stream import PARSE_INLINE_BYTES, Delivery
from margin.types import Chunk
from tests.pipeline.test_flow import Client, make_request

TEXT = b'{"choices":[{"delta":{"content":"and"}}]}'
CITED = b'{"choices":[{"delta":{"content":"x","annotations":[{"type":"url_citation"}]}}]}'


def _delivery(written: int, events: list[bytes]) -> Delivery:
    delivery = Delivery(make_request(Client([]), stream=True))
    delivery._rest = [Chunk(raw=event) for event in events]
    delivery.written = written
    return delivery


@pytest.mark.parametrize("long", [False, True])
async def test_the_look_for_an_unreplayable_part_leaves_the_loop_for_a_long_stream(
    long: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: set[int] = set()
    look = stream._unreplayed

    def recorded(chunk: Chunk) -> bool:
        threads.add(threading.get_ident())
        return look(chunk)

    monkeypatch.setattr(stream, "_unreplayed", recorded)
    written = PARSE_INLINE_BYTES + 1 if long else 1000
    assert await _delivery(written, [TEXT] * 500 + [CITED] + [TEXT] * 10).unreplayed()
    assert threads and (threading.get_ident() in threads) is not long  # long: a worker thread's; short: the loop's
    threads.clear()
    assert not await _delivery(written, [TEXT] * 500).unreplayed()
    assert len(threads) == 1 and (threading.get_ident() in threads) is not long
