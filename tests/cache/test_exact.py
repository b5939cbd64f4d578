"""Exact-cache keys, determinism and the in-memory store's TTL and byte bound."""

from __future__ import annotations

import asyncio

import orjson

from margin.cache.exact import Entry, MemoryCache, deterministic, request_key

MESSAGES = [{"role": "user", "content": "hi"}]


def entry(text: str = "hello", cost: int | None = 1000) -> Entry:
    return Entry(text, "stop", 3, 1, cost, "m", 1_700_000_000.0)


def test_key_ignores_transport_fields_but_not_sampling() -> None:
    base = {"model": "x", "messages": MESSAGES, "temperature": 0}
    key = request_key("team:a", "chat/completions", "m", base)
    same = {**base, "stream": True, "stream_options": {"include_usage": True}, "user": "u1", "model": "alias"}
    assert request_key("team:a", "chat/completions", "m", same) == key
    assert request_key("team:b", "chat/completions", "m", base) != key  # another tenant
    assert request_key("team:a", "chat/completions", "m2", base) != key  # another model
    assert request_key("team:a", "chat/completions", "m", {**base, "max_tokens": 5}) != key
    assert request_key("team:a", "chat/completions", "m", {**base, "temperature": 0.0001}) != key
    reordered = {"temperature": 0, "messages": MESSAGES, "model": "x"}
    assert request_key("team:a", "chat/completions", "m", reordered) == key


def test_key_ignores_upstream_hints_and_a_prediction_but_not_verbosity() -> None:
    """The upstream's prompt-cache and safety hints and a Predicted Output change nothing in the answer (OpenAI:
    the answer is the same without a prediction); `verbosity` does."""
    base = {"model": "x", "messages": MESSAGES, "temperature": 0}
    key = request_key("team:a", "chat/completions", "m", base)
    hints = {
        "prompt_cache_key": "k",
        "prompt_cache_retention": "24h",
        "prompt_cache_options": {"mode": "explicit"},
        "safety_identifier": "s",
        "prediction": {"type": "content", "content": "hello"},
    }
    assert request_key("team:a", "chat/completions", "m", {**base, **hints}) == key
    assert request_key("team:a", "chat/completions", "m", {**base, "verbosity": "low"}) != key


def test_deterministic_requests() -> None:
    assert deterministic({"temperature": 0})
    assert deterministic({"seed": 7, "temperature": 0.9})
    assert not deterministic({})
    assert not deterministic({"temperature": 0.2})


async def test_memory_cache_ttl_lru_and_bytes() -> None:
    size = len(entry().to_bytes())
    cache = MemoryCache(max_bytes=size * 2)
    await cache.put("a", entry(), 60)
    await cache.put("b", entry(), 60)
    assert await cache.get("a") is not None  # a is now the most recent
    await cache.put("c", entry(), 60)
    assert await cache.get("b") is None and await cache.get("a") is not None and len(cache) == 2
    assert cache.bytes_used <= size * 2
    await cache.put("short", entry(), 0.05)
    await asyncio.sleep(0.1)
    assert await cache.get("short") is None
    huge = entry(text="x" * (size * 3))
    await cache.put("huge", huge, 60)
    assert await cache.get("huge") is None  # larger than the whole cache: not stored


def test_entry_round_trip() -> None:
    original = entry(cost=None)
    assert Entry.from_bytes(original.to_bytes()) == original


def test_an_entry_keeps_its_stop_sequence_and_reads_across_versions() -> None:
    """The stop sequence round-trips; an entry without one is stored as an earlier margin stored entries (which it
    reads), and an entry with a field a later margin added is read without it (a Redis shared over an upgrade)."""
    stopped = Entry("hello", "stop", 3, 1, 1000, "m", 1_700_000_000.0, stop_sequence=" world")
    assert Entry.from_bytes(stopped.to_bytes()) == stopped
    assert "stop_sequence" not in orjson.loads(entry().to_bytes())
    later = {**orjson.loads(stopped.to_bytes()), "added_later": [1, 2]}
    assert Entry.from_bytes(orjson.dumps(later)) == stopped


async def test_redis_cache_round_trip_and_ttl(redis_url: str) -> None:
    from margin.cache.exact import RedisCache

    cache = RedisCache(redis_url)
    try:
        await cache.put("k1", entry(), 60)
        assert await cache.get("k1") == entry()
        assert await cache.get("missing") is None
        await cache.put("k2", entry(), 1)
        await asyncio.sleep(1.2)
        assert await cache.get("k2") is None
    finally:
        await cache.close()
