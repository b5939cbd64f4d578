from __future__ import annotations

from pathlib import Path

import numpy as np

from margin.cache.encoder import LazyEncoder, encode_cached
from tests.cache.fakes import FakeEncoder


def test_encode_cached_saves_chunks_and_reuses_them_for_a_prefix(tmp_path: Path) -> None:
    encoder = FakeEncoder(dim=8)
    texts = [f"t{i}" for i in range(10)]
    first = encode_cached(texts, encoder, tmp_path, chunk=4)
    assert first.shape == (10, 8) and encoder.calls == 3
    assert len(list(tmp_path.glob("chunk-*.npy"))) == 3
    again = encode_cached(texts[:8], encoder, tmp_path, chunk=4)
    assert encoder.calls == 3  # both full chunks read back
    np.testing.assert_array_equal(again, first[:8])
    encode_cached(texts[:6], encoder, tmp_path, chunk=4)
    assert encoder.calls == 4  # a partial chunk is a different chunk


def test_encode_without_a_cache_dir_writes_nothing(tmp_path: Path) -> None:
    encoder = FakeEncoder(dim=8)
    vectors = encode_cached(["a", "b"], encoder, None)
    assert vectors.shape == (2, 8) and not list(tmp_path.iterdir())


def test_lazy_encoder_does_not_load_until_called() -> None:
    encoder = LazyEncoder()
    assert encoder._model is None
