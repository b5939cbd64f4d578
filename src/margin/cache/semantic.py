"""Semantic cache: serve a stored answer when a new request's last user turn is close enough, in embedding
space, to an earlier one with the same scope and the same rest-of-conversation hash.

Entries live in buckets keyed by `(scope, context_hash)`; the caller builds `scope` from tenant, model and
system prompt, so no lookup ever crosses tenants, models or system prompts. A lookup returns the nearest
live entry of its bucket when its cosine similarity is ≥ `threshold` (take one from `load_calibration()`
for a chosen false-hit rate δ). The store is bounded: at most `max_entries` entries over all buckets, the
oldest inserted evicted first, and each entry expires `ttl_s` seconds after it was added.

Thread-safety: every public method may be called from any thread; index state is guarded by one lock held
only for the index operations (well under a millisecond), never while encoding. Encoding (~5–20 ms of CPU
for MiniLM) happens in the calling thread, so the gateway should call `lookup`/`add` from a worker thread,
not the event loop. `encode`/`lookup_vector`/`add_vector` let a caller encode once per request.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from margin.cache.identifiers import Identifiers
from margin.cache.index import ANN_MIN, AnnBucket, Bucket, ExactBucket
from margin.errors import ConfigError, InvalidRequest

Vector = npt.NDArray[np.float32]
Encoder = Callable[[list[str]], npt.NDArray[np.float32]]
SEARCH_K = 4
RECENT_VECTORS = 256


@dataclass(frozen=True, slots=True)
class SemanticHit:
    key: str
    similarity: float


@dataclass(slots=True)
class _Entry:
    bucket: tuple[str, str]
    key: str
    text_digest: str
    expires_at: float
    tenant: str | None = None
    identifiers: Identifiers | None = None


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class SemanticCache:
    def __init__(
        self,
        encoder: Encoder,
        *,
        threshold: float,
        max_entries: int = 100_000,
        ttl_s: float | None = 3600,
        dim: int = 384,
        clock: Callable[[], float] = time.monotonic,
        ann_min: int = ANN_MIN,
        max_entries_per_tenant: int | None = None,
    ) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ConfigError(f"semantic cache threshold {threshold} is not a cosine in [-1, 1]")
        if max_entries < 1:
            raise ConfigError("semantic cache max_entries must be at least 1")
        if ttl_s is not None and ttl_s <= 0:
            raise ConfigError("semantic cache ttl_s must be positive (or None for no expiry)")
        if max_entries_per_tenant is not None and max_entries_per_tenant < 1:
            raise ConfigError("semantic cache max_entries_per_tenant must be at least 1")
        self.encoder = encoder
        self.threshold = threshold
        self.max_entries = max_entries
        self.max_entries_per_tenant = max_entries_per_tenant
        self.ttl_s = ttl_s
        self.dim = dim
        self._clock = clock
        self._ann_min = ann_min
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._by_text: dict[tuple[str, str, str], int] = {}
        self._by_tenant: dict[str, OrderedDict[int, None]] = {}
        self._recent: OrderedDict[str, Vector] = OrderedDict()
        self._next_id = 1

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._entries)

    # -- encoding -------------------------------------------------------------------------------------------
    def encode(self, text: str) -> Vector:
        """The normalised embedding of `text`; the last few are remembered so `add` after a missed `lookup`
        of the same text does not encode twice."""
        digest = _digest(text)
        with self._lock:
            cached = self._recent.get(digest)
        if cached is not None:
            return cached
        vectors = np.asarray(self.encoder([text]), dtype=np.float32)
        if vectors.shape != (1, self.dim):
            raise InvalidRequest(f"encoder returned shape {vectors.shape}, expected (1, {self.dim})")
        vector = _normalise(vectors[0])
        with self._lock:
            self._recent[digest] = vector
            while len(self._recent) > RECENT_VECTORS:
                self._recent.popitem(last=False)
        return vector

    # -- lookup ---------------------------------------------------------------------------------------------
    def lookup(self, scope: str, context_hash: str, text: str) -> SemanticHit | None:
        """The entry to serve for `text`, or None. Same scope and context hash only; similarity ≥ threshold;
        the same names, ids and numbers as the stored question (`Identifiers`)."""
        return self.lookup_vector(scope, context_hash, self.encode(text), Identifiers.of(text))

    def lookup_vector(
        self, scope: str, context_hash: str, vector: Vector, identifiers: Identifiers | None = None
    ) -> SemanticHit | None:
        hit = self.nearest(scope, context_hash, vector, identifiers)
        return hit if hit is not None and hit.similarity >= self.threshold else None

    def nearest(
        self, scope: str, context_hash: str, vector: Vector, identifiers: Identifiers | None = None
    ) -> SemanticHit | None:
        """The nearest live entry of the bucket whatever its similarity (evaluation uses this), skipping
        entries whose question holds other identifiers than `identifiers` (when given)."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            bucket = self._buckets.get((scope, context_hash))
            if bucket is None:
                return None
            for entry_id, similarity in bucket.search(vector, SEARCH_K):
                entry = self._entries.get(entry_id)
                if entry is None or entry.expires_at <= now:  # one added with a shorter life, behind the front
                    continue
                if identifiers is not None and entry.identifiers and not identifiers.compatible(entry.identifiers):
                    continue
                return SemanticHit(entry.key, similarity)
            return None

    # -- insertion ------------------------------------------------------------------------------------------
    def add(self, scope: str, context_hash: str, text: str, key: str) -> None:
        """Remember that `text` (in this scope and context) was answered by the exact-cache entry `key`.
        Adding the same text again replaces the earlier entry (new key, fresh TTL)."""
        self.add_vector(
            scope, context_hash, self.encode(text), key, text_digest=_digest(text), identifiers=Identifiers.of(text)
        )

    def add_vector(
        self,
        scope: str,
        context_hash: str,
        vector: Vector,
        key: str,
        *,
        text_digest: str = "",
        tenant: str | None = None,
        identifiers: Identifiers | None = None,
        ttl_s: float | None = None,
    ) -> None:
        """Add an entry. A `tenant` over `max_entries_per_tenant` makes room by evicting its own oldest entry,
        never another tenant's; the store as a whole evicts the oldest entry past `max_entries`. `ttl_s`: a
        shorter life than the store's (an entry another process added earlier)."""
        bucket_key = (scope, context_hash)
        now = self._clock()
        life = self.ttl_s if ttl_s is None else ttl_s if self.ttl_s is None else min(ttl_s, self.ttl_s)
        expires_at = now + life if life is not None else float("inf")
        with self._lock:
            self._expire(now)
            if text_digest:
                old = self._by_text.get((scope, context_hash, text_digest))
                if old is not None:
                    self._remove(old)
            self._make_room(tenant)
            entry_id = self._next_id
            self._next_id += 1
            bucket = self._bucket_for(bucket_key)
            bucket.add(entry_id, _normalise(vector))
            self._entries[entry_id] = _Entry(bucket_key, key, text_digest, expires_at, tenant, identifiers)
            if text_digest:
                self._by_text[(scope, context_hash, text_digest)] = entry_id
            if tenant is not None:
                self._by_tenant.setdefault(tenant, OrderedDict())[entry_id] = None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._buckets.clear()
            self._by_text.clear()
            self._by_tenant.clear()

    def tenant_size(self, tenant: str) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._by_tenant.get(tenant, ()))

    def bucket_count(self) -> int:
        with self._lock:
            return len(self._buckets)

    # -- internals (lock held) ------------------------------------------------------------------------------
    def _make_room(self, tenant: str | None) -> None:
        own = self._by_tenant.get(tenant) if tenant is not None else None
        while own and self.max_entries_per_tenant is not None and len(own) >= self.max_entries_per_tenant:
            self._remove(next(iter(own)))
        while len(self._entries) >= self.max_entries:
            self._remove(next(iter(self._entries)))

    def _bucket_for(self, bucket_key: tuple[str, str]) -> Bucket:
        bucket = self._buckets.get(bucket_key)
        if bucket is None:
            bucket = ExactBucket(self.dim)
            self._buckets[bucket_key] = bucket
        elif isinstance(bucket, ExactBucket) and len(bucket) >= self._ann_min:
            ids, vectors = bucket.items()
            bucket = AnnBucket.from_items(self.dim, ids, vectors)
            self._buckets[bucket_key] = bucket
        return bucket

    def _remove(self, entry_id: int) -> None:
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return
        bucket = self._buckets.get(entry.bucket)
        if bucket is not None:
            bucket.remove(entry_id)
            if len(bucket) == 0:
                del self._buckets[entry.bucket]
        if entry.text_digest:
            text_key = (*entry.bucket, entry.text_digest)
            if self._by_text.get(text_key) == entry_id:
                del self._by_text[text_key]
        if entry.tenant is not None:
            own = self._by_tenant.get(entry.tenant)
            if own is not None:
                own.pop(entry_id, None)
                if not own:
                    del self._by_tenant[entry.tenant]

    def _expire(self, now: float) -> None:
        """Entries are kept in insertion order and most share one TTL, so expired ones are at the front (one
        added with a shorter `ttl_s` may expire behind it: `nearest` skips it, eviction removes it later)."""
        while self._entries:
            entry_id, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                return
            self._remove(entry_id)


def _normalise(vector: Vector) -> Vector:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector
