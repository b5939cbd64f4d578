from __future__ import annotations

from pathlib import Path

import numpy as np

from margin.routing.features import EmbeddingCache, normalize_rows


class CountingEncoder:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.seen.extend(texts)
        return np.asarray([[len(t), 1.0, 0.0] for t in texts])


def test_cache_encodes_only_missing_prompts(tmp_path: Path) -> None:
    encoder = CountingEncoder()
    cache = EmbeddingCache(tmp_path / "e.npz", encoder)
    first = cache.embed(["ab", "abcd"])
    assert sorted(encoder.seen) == ["ab", "abcd"]
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0)
    again = EmbeddingCache(tmp_path / "e.npz", encoder)
    assert again.cached(["abcd", "xyz"]) == [True, False]
    second = again.embed(["abcd", "xyz", "ab"])
    assert sorted(encoder.seen) == ["ab", "abcd", "xyz"]  # nothing encoded twice
    assert np.allclose(second[0], first[1]) and np.allclose(second[2], first[0])


def test_normalize_rows_keeps_zero_rows() -> None:
    rows = normalize_rows([[3.0, 4.0], [0.0, 0.0]])
    assert np.allclose(rows, [[0.6, 0.8], [0.0, 0.0]])
