from __future__ import annotations

import threading
from typing import cast

import numpy as np
import pytest

from margin.cache.index import AnnBucket, ExactBucket
from margin.cache.semantic import SemanticCache, SemanticHit
from margin.errors import ConfigError
from tests.cache.fakes import FakeClock, FakeEncoder

NEAR = {
    "how do I reset my password?": ("how can I reset my password?", 0.95),
    "how do I delete my account?": ("how can I reset my password?", 0.70),
}


def make(threshold: float = 0.9, **kwargs: object) -> tuple[SemanticCache, FakeEncoder]:
    encoder = FakeEncoder(near=NEAR)
    return SemanticCache(encoder, threshold=threshold, dim=32, **kwargs), encoder  # type: ignore[arg-type]


def test_paraphrase_hits_and_unrelated_misses() -> None:
    cache, _ = make()
    cache.add("t1|m|sys", "ctx", "how can I reset my password?", "k1")
    hit = cache.lookup("t1|m|sys", "ctx", "how do I reset my password?")
    assert hit is not None and hit.key == "k1"
    assert hit.similarity == pytest.approx(0.95, abs=1e-4)
    assert cache.lookup("t1|m|sys", "ctx", "how do I delete my account?") is None
    assert cache.lookup("t1|m|sys", "ctx", "something else entirely") is None


@pytest.mark.parametrize(
    ("scope", "context"),
    [("t2|m|sys", "ctx"), ("t1|m2|sys", "ctx"), ("t1|m|other system prompt", "ctx"), ("t1|m|sys", "ctx2")],
)
def test_no_hit_across_tenants_models_system_prompts_or_contexts(scope: str, context: str) -> None:
    cache, _ = make()
    cache.add("t1|m|sys", "ctx", "how can I reset my password?", "k1")
    assert cache.lookup(scope, context, "how can I reset my password?") is None
    # cast: SemanticHit's similarity is a float; approx compares equal to one
    assert cache.lookup("t1|m|sys", "ctx", "how can I reset my password?") == SemanticHit(
        "k1", cast(float, pytest.approx(1.0))
    )


def test_threshold_boundary() -> None:
    cache, _ = make(threshold=0.96)
    cache.add("s", "c", "how can I reset my password?", "k1")
    assert cache.lookup("s", "c", "how do I reset my password?") is None
    hit = cache.nearest("s", "c", cache.encode("how do I reset my password?"))
    assert hit is not None and hit.key == "k1"


def test_ttl_expires_entries() -> None:
    clock = FakeClock()
    cache, _ = make(ttl_s=60, clock=clock)
    cache.add("s", "c", "a", "k-a")
    clock.now += 30
    cache.add("s", "c", "b", "k-b")
    assert len(cache) == 2
    clock.now += 31
    assert cache.lookup("s", "c", "a") is None
    assert cache.lookup("s", "c", "b") is not None
    assert len(cache) == 1
    clock.now += 30
    assert len(cache) == 0
    assert cache.bucket_count() == 0


def test_entry_count_is_bounded_oldest_evicted_first() -> None:
    cache, _ = make(max_entries=10, ttl_s=None)
    for i in range(25):
        cache.add(f"s{i % 3}", "c", f"text {i}", f"k{i}")
        assert len(cache) <= 10
    assert len(cache) == 10
    assert cache.lookup(f"s{14 % 3}", "c", "text 14") is None
    hit = cache.lookup(f"s{15 % 3}", "c", "text 15")
    assert hit is not None and hit.key == "k15"


def test_readding_a_text_replaces_it() -> None:
    cache, _ = make()
    cache.add("s", "c", "q", "old")
    cache.add("s", "c", "q", "new")
    assert len(cache) == 1
    hit = cache.lookup("s", "c", "q")
    assert hit is not None and hit.key == "new"


def test_lookup_then_add_encodes_once() -> None:
    cache, encoder = make()
    assert cache.lookup("s", "c", "fresh question") is None
    cache.add("s", "c", "fresh question", "k")
    assert encoder.calls == 1


def test_large_bucket_moves_to_ann_and_still_evicts() -> None:
    cache, _ = make(threshold=0.99, ann_min=64, max_entries=150, ttl_s=None)
    for i in range(200):
        cache.add("s", "c", f"question number {i}", f"k{i}")
    bucket = cache._buckets[("s", "c")]
    assert isinstance(bucket, AnnBucket)
    assert len(cache) == len(bucket) == 150
    for i in range(50, 200, 7):
        hit = cache.lookup("s", "c", f"question number {i}")
        assert hit is not None and hit.key == f"k{i}"
    assert cache.lookup("s", "c", "question number 3") is None


def test_invalid_settings() -> None:
    with pytest.raises(ConfigError):
        make(threshold=1.5)
    with pytest.raises(ConfigError):
        make(max_entries=0)
    with pytest.raises(ConfigError):
        make(ttl_s=0)


def test_concurrent_adds_and_lookups() -> None:
    cache, _ = make(max_entries=300, ttl_s=None, ann_min=100)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(150):
                cache.add("s", "c", f"w{worker} q{i}", f"k{worker}-{i}")
                cache.lookup("s", "c", f"w{worker} q{i // 2}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(cache) == 300


def test_exact_bucket_swap_remove_keeps_ids_consistent() -> None:
    bucket = ExactBucket(dim=4, capacity=2)
    vectors = np.eye(4, dtype=np.float32)
    for i in range(4):
        bucket.add(i, vectors[i])
    bucket.remove(1)
    bucket.remove(7)
    assert len(bucket) == 3
    for i in (0, 2, 3):
        assert bucket.search(vectors[i], 1)[0][0] == i
    ranked = [entry_id for entry_id, _ in bucket.search(vectors[0], 5)]
    assert ranked[0] == 0 and sorted(ranked) == [0, 2, 3]


def test_no_hit_across_different_identifiers() -> None:
    from margin.cache.identifiers import Identifiers

    encoder = FakeEncoder(near={"status of order 12346": ("status of order 12345", 0.99)})
    cache = SemanticCache(encoder, threshold=0.9, dim=32)
    cache.add("s", "c", "status of order 12345", "k1")
    query = "status of order 12346"
    assert cache.nearest("s", "c", cache.encode(query)) is not None  # close in embedding space …
    assert cache.lookup("s", "c", query) is None  # … but another order's answer is never served
    assert cache.lookup_vector("s", "c", cache.encode(query), Identifiers.of(query)) is None


def test_tenant_quota_evicts_only_its_own_entries() -> None:
    cache, _ = make(max_entries=10, max_entries_per_tenant=3)
    cache.add_vector("victim|m", "c", cache.encode("victim question"), "v1", tenant="victim")
    for i in range(50):
        cache.add_vector("flood|m", "c", cache.encode(f"flood {i}"), f"f{i}", tenant="flood")
    assert cache.tenant_size("flood") == 3 and cache.tenant_size("victim") == 1
    hit = cache.lookup("victim|m", "c", "victim question")
    assert hit is not None and hit.key == "v1"
    assert cache.lookup("flood|m", "c", "flood 49") is not None and cache.lookup("flood|m", "c", "flood 0") is None
    with pytest.raises(ConfigError):
        make(max_entries_per_tenant=0)
