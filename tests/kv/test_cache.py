"""The compressed cache inside a real transformers model: a tiny random Llama (no weights to download)."""

from __future__ import annotations

from typing import Any, cast

import pytest
import torch
import transformers

from margin.kv.cache import CompressedCache, CompressedLayer
from margin.kv.methods import get_method


@pytest.fixture(scope="module")
def model() -> Any:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
    )
    model: Any = transformers.LlamaForCausalLM(config)  # Any: transformers' eval() is untyped
    return model.eval()


def _prompt(length: int) -> torch.Tensor:
    return torch.randint(0, 97, (1, length), generator=torch.Generator().manual_seed(length))


def _generate(model: Any, cache: Any, prompt: torch.Tensor, new: int) -> torch.Tensor:
    with torch.no_grad():
        return cast(
            torch.Tensor,
            model.generate(prompt, past_key_values=cache, max_new_tokens=new, min_new_tokens=new, do_sample=False),
        )


def test_fp16_cache_generates_like_the_uncompressed_cache(model: Any) -> None:
    prompt = _prompt(20)
    reference = _generate(model, transformers.DynamicCache(config=model.config), prompt, 6)
    cache = CompressedCache.for_model(get_method("fp16"), model)
    assert torch.equal(_generate(model, cache, prompt, 6), reference)
    assert cache.get_seq_length() == 20 + 6 - 1
    assert cache.nbytes == 2 * 2 * 2 * 16 * 2 * cache.get_seq_length()  # layers × K,V × heads × dim × fp16


@pytest.mark.parametrize("name", ["tq-mse-3", "tq-prod-3", "tq-mse-2.5", "kivi-2", "had-int4", "fp8"])
def test_generation_through_compressed_caches(model: Any, name: str) -> None:
    prompt = _prompt(40)
    cache = CompressedCache.for_model(get_method(name), model)
    out = _generate(model, cache, prompt, 5)
    assert out.shape == (1, 45)
    assert cache.get_seq_length() == 44
    kv_len, offset = cache.get_mask_sizes(1, 0)
    assert (kv_len, offset) == (45, 0)
    layer = cache.layers[0]
    assert isinstance(layer, CompressedLayer)
    keys = layer.stores[0].read()
    assert keys.shape == (1, 2, 44, 16)
    assert 0 < cache.nbytes < 2 * 2 * 2 * 16 * 2 * 44


def test_every_read_is_decoded_from_the_compressed_store(model: Any) -> None:
    cache = CompressedCache.for_model(get_method("tq-mse-2"), model)
    layer = cache.layers[0]
    assert isinstance(layer, CompressedLayer)
    k = torch.randn(1, 2, 33, 16)
    v = torch.randn(1, 2, 33, 16)
    keys, _ = layer.update(k, v)
    assert keys.shape == k.shape
    assert not torch.allclose(keys, k, atol=1e-3)  # 2-bit keys are visibly lossy
    assert layer.stores[0].encoded is not None
    assert torch.equal(keys, layer.codecs.key.decode(layer.stores[0].encoded))
    more_k, _ = layer.update(torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16))
    assert more_k.shape == (1, 2, 34, 16)
    assert torch.equal(more_k[..., :33, :], keys)


def test_kivi_keeps_an_incomplete_token_group_in_fp16(model: Any) -> None:
    layer = CompressedCache.for_model(get_method("kivi-4"), model).layers[0]
    assert isinstance(layer, CompressedLayer)
    k = torch.randn(1, 2, 40, 16)
    layer.update(k, torch.randn(1, 2, 40, 16))
    store = layer.stores[0]
    assert store.encoded is not None and store.encoded.tokens == 32
    assert store.tail is not None and store.tail.shape[-2] == 8
    layer.update(torch.randn(1, 2, 24, 16), torch.randn(1, 2, 24, 16))
    assert store.encoded.tokens == 64 and store.tail is None


def test_quantize_prompt_false_gives_exact_prompt_attention(model: Any) -> None:
    prompt = _prompt(24)
    with torch.no_grad():
        exact = model(prompt).logits
        lossy = model(prompt, past_key_values=CompressedCache.for_model(get_method("tq-mse-1"), model)).logits
        kept = CompressedCache.for_model(get_method("tq-mse-1"), model, quantize_prompt=False)
        same = model(prompt, past_key_values=kept).logits
    assert torch.allclose(same, exact, atol=1e-5)
    assert not torch.allclose(lossy, exact, atol=1e-3)
    assert kept.get_seq_length() == 24


def test_speed_measurement_alternates_rounds_and_reports_real_bytes(model: Any) -> None:
    from margin.kv.generation import run_speed
    from margin.kv.model import LoadedModel

    loaded = LoadedModel(model, None, "tiny")
    methods = [get_method("fp16"), get_method("tq-mse-4")]
    out = run_speed(loaded, methods, list(range(1, 33)), new_tokens=3, seed=0, rounds=2)
    rows = out["methods"]
    assert set(rows) == {"reference", "fp16", "tq-mse-4"}
    assert all(len(r["rounds"]) == 2 and r["decode_tok_s"] > 0 for r in rows.values())
    assert rows["fp16"]["cache_bytes_per_token"] == 2 * 2 * 2 * 16 * 2  # layers × K,V × heads × dim × 2 bytes
    assert rows["tq-mse-4"]["cache_bytes_per_token"] == 2 * 2 * 2 * (16 * 4 // 8 + 2)
