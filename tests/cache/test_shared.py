"""The semantic cache's additions shared through a real Redis (`margin.cache.shared`): what one process stores
is a hit in another, a process that starts later back-fills, scopes and tenant quotas hold on the receiving
side, the stream stays capped, a record that is not what the feed writes is skipped, and a Redis that is gone
never stalls an addition or a lookup."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import orjson
import pytest

from margin.cache.exact import RedisCache
from margin.cache.identifiers import Identifiers
from margin.cache.layer import BACKFILL_WAIT_S, SemanticLayer, Where
from margin.cache.shared import SemanticFeed, Shared, decode, encode
from margin.cache_config import CacheConfig
from tests.cache.fakes import FakeEncoder

QUESTION = "how can I reset my password?"


def config(**semantic: Any) -> CacheConfig:
    return CacheConfig.model_validate({"semantic": {"enabled": True, **semantic}})


def where(tenant: str, text: str, model: str = "m") -> Where:
    found = SemanticLayer.where(tenant, "chat", model, {"messages": [{"role": "user", "content": text}]})
    assert found is not None
    return found


@asynccontextmanager
async def layer(url: str, stream: str, **semantic: Any) -> AsyncIterator[SemanticLayer]:
    """A process's semantic layer on the Redis at `url`, sharing through `stream` (one per test)."""
    store = RedisCache(url)
    gateway = SemanticLayer(config(**semantic), encoder=FakeEncoder(dim=384), redis=store.client)
    assert gateway.feed is not None
    gateway.feed.stream = stream
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()
        gateway.close()
        await store.close()


async def add(gateway: SemanticLayer, place: Where, key: str) -> None:
    _, vector = await gateway.lookup(place)
    await gateway.add(place, vector, key)


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.02)


@pytest.fixture
def stream() -> str:
    return f"test:semantic:{uuid.uuid4().hex}"


async def test_an_answer_stored_in_one_process_is_a_hit_in_another(redis_url: str, stream: str) -> None:
    async with layer(redis_url, stream) as one, layer(redis_url, stream) as two:
        place = where("team-a", QUESTION)
        assert (await two.lookup(place))[0] is None
        await add(one, place, "a" * 64)
        await eventually(lambda: len(two.cache) == 1)
        hit, _ = await two.lookup(place)
        assert hit is not None and hit.key == "a" * 64
        assert len(one.cache) == 1  # its own record read back is not added twice
        assert one.feed is not None and one.feed.received == 0
        await add(two, place, "a" * 64)  # the same answer stored again (both missed at once): replaced, not doubled
        await eventually(lambda: one.feed is not None and one.feed.received == 1)
        assert len(one.cache) == 1 and len(two.cache) == 1


async def test_scopes_and_the_tenant_quota_hold_on_the_receiving_side(redis_url: str, stream: str) -> None:
    quota = {"max_entries_per_tenant": 2}
    async with layer(redis_url, stream, **quota) as one, layer(redis_url, stream, **quota) as two:
        for i in range(3):
            await add(one, where("team-a", f"question {i}"), f"{i:064x}")
        await add(one, where("team-b", QUESTION), "b" * 64)
        await eventually(lambda: two.feed is not None and two.feed.received == 4)
        assert two.cache.tenant_size("team-a") == 2  # the receiver's own quota (2) evicted team-a's oldest
        assert two.cache.tenant_size("team-b") == 1
        assert (await two.lookup(where("team-b", QUESTION)))[0] is not None
        # another tenant, another model: the same question is never answered from team-b's entry
        assert (await two.lookup(where("team-a", QUESTION)))[0] is None
        assert (await two.lookup(where("team-b", QUESTION, model="other")))[0] is None


async def test_what_is_queued_when_a_process_stops_is_still_shared(redis_url: str, stream: str) -> None:
    async with layer(redis_url, stream) as one:
        for i in range(100):
            await add(one, where("team-a", f"question {i}"), f"{i:064x}")
    async with layer(redis_url, stream) as late:
        assert len(late.cache) == 100


async def test_a_process_starting_later_back_fills_from_a_capped_stream(redis_url: str, stream: str) -> None:
    async with layer(redis_url, stream, max_entries=50) as one:  # the stream keeps about max_entries records
        assert one.feed is not None and one.feed.maxlen == 50
        for i in range(400):
            await add(one, where("team-a", f"question {i}"), f"{i:064x}")
        await eventually(lambda: one.feed is not None and one.feed._queue.empty())
        await asyncio.sleep(0.2)
        length = await one.feed._redis.xlen(stream)
        assert 50 <= length <= 200  # MAXLEN ~: trimmed by whole nodes of 100 records
        async with layer(redis_url, stream) as late:
            assert len(late.cache) == length  # in before its start returned
            hit, _ = await late.lookup(where("team-a", "question 399"))
            assert hit is not None and hit.key == f"{399:064x}"
            assert (await late.lookup(where("team-a", "question 0")))[0] is None  # trimmed away


def record(**changes: Any) -> dict[str, bytes]:
    """The fields of a valid record for tenant t, with `changes` (m_*: metadata keys; o, v: fields)."""
    vector = FakeEncoder(dim=384).vector(QUESTION)
    place = where("t", QUESTION)
    meta = {"t": "t", "s": place[1], "c": place[2], "k": "c" * 64, "e": time.time() + 60, "w": None, "i": None}
    meta |= {name[2:]: value for name, value in changes.items() if name.startswith("m_")}
    fields = {"o": b"elsewhere", "m": orjson.dumps(meta), "v": vector.tobytes()}
    return fields | {name: value for name, value in changes.items() if not name.startswith("m_")}


async def test_records_that_are_not_what_the_feed_writes_are_skipped(redis_url: str, stream: str) -> None:
    hostile = [
        record(v=b"\0" * 12),  # wrong size
        record(v=np.full(384, np.nan, dtype=np.float32).tobytes()),
        record(v=np.zeros(384, dtype=np.float32).tobytes()),
        record(m=b"not json"),
        record(m=b"[1, 2]"),
        record(m_k="../../etc"),  # not an exact-cache key
        record(m_c=None),
        record(m_s="x" * 5000),
        record(m_e="soon"),
        record(m_w=["a"], m_i=["b"]),  # marked words that are not words of the question
        record(m=orjson.dumps({"pad": "x" * 20_000})),  # over the metadata bound
    ]
    expired = record(m_e=time.time() - 1)
    store = RedisCache(redis_url)
    try:
        for fields in [*hostile, expired, record()]:
            await store.client.xadd(stream, fields)
        async with layer(redis_url, stream) as two:
            await eventually(lambda: two.feed is not None and two.feed.skipped == len(hostile))
            await eventually(lambda: len(two.cache) == 1)  # the valid one; the expired one is not added
            hit, _ = await two.lookup(where("t", QUESTION))
            assert hit is not None and hit.key == "c" * 64
    finally:
        await store.close()


async def test_a_redis_that_is_gone_never_stalls_an_addition_or_a_lookup(tmp_path: Any) -> None:
    url = f"unix://{tmp_path / 'nothing.sock'}"
    async with layer(url, "s") as alone:
        place = where("team-a", QUESTION)
        started = time.monotonic()
        for i in range(2000):  # more than the queue holds
            await add(alone, where("team-a", f"q {i}"), f"{i:064x}")
        await add(alone, place, "a" * 64)
        hit, _ = await alone.lookup(place)
        assert hit is not None and hit.key == "a" * 64  # served from this process's index
        assert time.monotonic() - started < 30
        assert alone.feed is not None
        await eventually(lambda: alone.feed is not None and alone.feed.dropped > 0)


async def test_a_feed_encodes_what_it_decodes() -> None:
    feed = SemanticFeed(None, dim=384, maxlen=10)
    vector = FakeEncoder(dim=384).vector(QUESTION)
    place = where("t", QUESTION)
    entry = Shared("t", place[1], place[2], "d" * 64, Identifiers.of("Order 42"), 123.5, vector)
    fields = encode(feed.origin, entry)
    assert fields is not None
    back = decode({name.encode(): value for name, value in fields.items()}, 384)
    assert back.identifiers == entry.identifiers and back.key == entry.key and back.expires_at == 123.5
    assert np.array_equal(back.vector, vector)


async def test_a_redis_that_never_answers_delays_a_start_by_at_most_the_back_fill_wait() -> None:
    """A start waits BACKFILL_WAIT_S for the back-fill, then serves from its own index (without that bound it
    waited for ever). The start's bound is 3 times that wait: it was the wait plus 2 s, which a loaded machine's
    start comes close to (the wait itself is most of a healthy start)."""
    with socket.socket() as listener:  # accepts connections (the kernel's backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        async with layer(url, "s") as hung:
            waited = time.monotonic() - started
            assert waited < 3 * BACKFILL_WAIT_S, waited
            place = where("team-a", QUESTION)
            served = time.monotonic()
            for i in range(20):
                await add(hung, where("team-a", f"q {i}"), f"{i:064x}")
            await add(hung, place, "a" * 64)
            hit, _ = await hung.lookup(place)
            assert hit is not None and time.monotonic() - served < 2  # nothing waited on Redis
            closing = time.monotonic()
        assert time.monotonic() - closing < 5
