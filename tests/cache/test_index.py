from __future__ import annotations

from typing import cast

import numpy as np
import numpy.typing as npt

from margin.cache.index import AnnBucket, ExactBucket


def unit(rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    # numpy types np.linalg.norm(..., keepdims=True) as Any
    return cast(npt.NDArray[np.float32], (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32))


def test_ann_recall_matches_exact_search_for_queries_with_a_close_neighbour() -> None:
    """What a cache needs: a query whose nearest entry is above any sensible threshold (cos ≈ 0.8) must
    find that entry. Random queries with no close neighbour may get a worse one: a miss either way."""
    rng = np.random.default_rng(0)
    n, dim = 2000, 384
    stored = unit(rng.normal(size=(n, dim)))
    ann = AnnBucket.from_items(dim, list(range(n)), stored)
    exact = ExactBucket(dim)
    for i in range(n):
        exact.add(i, stored[i])
    targets = rng.choice(n, 200, replace=False)
    queries = unit(stored[targets] + 0.035 * rng.normal(size=(200, dim)))
    found = 0
    for query in queries:
        (exact_id, exact_sim), (ann_id, ann_sim) = exact.search(query, 1)[0], ann.search(query, 1)[0]
        assert 0.75 < exact_sim < 0.9
        found += ann_id == exact_id
        assert abs(ann_sim - exact_sim) < 1e-4 or ann_id != exact_id
    assert found / len(queries) >= 0.99
    # exact mode of the same index agrees with numpy for arbitrary random queries
    for query in unit(rng.normal(size=(20, dim))):
        assert ann.search_exact(query, 1)[0][0] == exact.search(query, 1)[0][0]


def test_ann_remove_and_replace() -> None:
    rng = np.random.default_rng(1)
    stored = unit(rng.normal(size=(100, 16)))
    ann = AnnBucket.from_items(16, list(range(100)), stored)
    ann.remove(5)
    ann.remove(5)
    assert len(ann) == 99
    assert ann.search(stored[5], 1)[0][0] != 5
    ann.add(7, stored[5])
    assert ann.search(stored[5], 1)[0][0] == 7
    assert len(ann) == 99
