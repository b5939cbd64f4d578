"""The response cache's configuration (`cache:` in the config file): the exact store, request coalescing and the
semantic layer. Part of `margin.config.Settings`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from margin.specs import Spec


class SemanticCacheConfig(Spec):
    enabled: bool = Field(False, description="Also answer from similar earlier questions (error-bounded).")
    delta: float = Field(0.01, gt=0, lt=1, description="Largest false-hit rate the operator accepts.")
    max_entries: int = Field(100_000, ge=1)
    max_entries_per_tenant: int = Field(
        10_000, ge=1, description="Entries one cache scope (team, key) may hold; it evicts its own oldest first."
    )
    max_queued_lookups: int = Field(
        32,
        ge=1,
        le=100_000,
        description="Lookups waiting for (or on) the encoder's one thread at once; a request past it skips the "
        "semantic cache (an exact miss goes upstream) rather than wait behind them.",
    )


MAX_CACHE_TTL_S = 2**31 - 1  # about 68 years: "keep for ever" settings (5, 10 years) start


class CacheConfig(Spec):
    """Response cache. Deterministic requests (temperature 0 or a seed) are cached unless the caller sends
    `x-margin-cache: off`; other requests only with `x-margin-cache: on`."""

    enabled: bool = True
    ttl_s: float = Field(
        3600,
        gt=0,
        le=MAX_CACHE_TTL_S,
        allow_inf_nan=False,
        description="How long an entry is served, in seconds: finite, at most 2^31 - 1 (about 68 years; a Redis "
        "takes the TTL as a whole number of seconds).",
    )
    max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Memory bound of the in-process store, and of the embedded Redis that holds the entries with "
        "`--workers N` and no Redis configured (at least 8 MiB there; least recently used entries go first).",
    )
    max_disk_bytes: int = Field(
        1024**3,
        ge=1024,
        le=1024**4,
        description="Bound of the entries' bytes (key and value) in the SQLite ledger file's table: past it, the "
        "oldest written go (on the cache's worker thread) until it holds 7/8 of it. SQLite's own overhead (row "
        "headers, the key and expiry indexes, partly filled pages) is not counted: its file measured 1.02 to 1.92 "
        "times the bound (benchmarks/cache_disk_overhead.py). Not used with Redis.",
    )
    redis: str | None = Field(
        None,
        description="A Redis for the entries, apart from storage.redis (give it a maxmemory and an LRU policy: an "
        "eviction policy on storage.redis could drop a budget reservation). Unset: storage.redis.",
    )
    scope: Literal["team", "key", "global"] = Field(
        "team", description="Who shares entries: a team (default), one key, or everyone."
    )
    coalesce_wait_s: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="How long an identical cacheable request that misses while another request (in this process, "
        "or in any with the entries in Redis) is calling upstream for the same key waits for that answer, at most "
        "(and never longer than the first call's time limit); then it goes upstream itself. 0: no waiting, each "
        "miss calls.",
    )
    coalesce_max_keys: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="In one process (the entries in memory or SQLite): the most keys being called upstream at once "
        "that identical misses may wait on; a miss of another key past it goes upstream without a lease.",
    )
    coalesce_max_waiters: int = Field(
        1_000,
        ge=1,
        le=100_000,
        description="In one process: the most requests waiting on one key's call; the next goes upstream itself.",
    )
    semantic: SemanticCacheConfig = SemanticCacheConfig()
