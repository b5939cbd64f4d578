"""Memory arithmetic on hand-computed cases."""

from __future__ import annotations

import pytest

from margin.plan.catalog import Catalog
from margin.plan.memory import kv_bytes_per_token, plan_memory, weight_bytes

# measured by `margin kv eval` (benchmarks/results/kv_eval.md, SmolLM2-135M, head_dim 64)
KV_EVAL_BYTES = {
    "fp16": 23040,
    "fp8": 11520,
    "kivi-8": 12960,
    "kivi-4": 7200,
    "kivi-2": 4320,
    "had-int4": 6480,
    "had-int3": 5040,
    "tq-mse-4": 6120,
    "tq-mse-3.5": 5760,
    "tq-mse-3": 4680,
    "tq-mse-2.5": 4320,
    "tq-mse-2": 3240,
    "tq-prod-4": 6300,
    "tq-prod-3": 4860,
    "tq-prod-2": 3420,
}


def test_smollm2_kv_bytes_per_token_is_2_x_30_x_3_x_64_x_bytes(catalog: Catalog) -> None:
    model = catalog.get_model("smollm2-135m")
    assert kv_bytes_per_token(model, catalog.get_kv("fp16")) == 2 * 30 * 3 * 64 * 2 == 23040
    assert kv_bytes_per_token(model, catalog.get_kv("fp8")) == 2 * 30 * 3 * 64 * 1
    assert kv_bytes_per_token(model, catalog.get_kv("fp32")) == 2 * 30 * 3 * 64 * 4


@pytest.mark.parametrize(("kv", "expected"), sorted(KV_EVAL_BYTES.items()))
def test_kv_formats_match_the_bytes_margin_kv_measured(catalog: Catalog, kv: str, expected: int) -> None:
    assert kv_bytes_per_token(catalog.get_model("smollm2-135m"), catalog.get_kv(kv)) == expected


def test_llama_8b_kv_bytes_per_token(catalog: Catalog) -> None:
    model = catalog.get_model("llama-3.1-8b")
    assert kv_bytes_per_token(model, catalog.get_kv("bf16")) == 2 * 32 * 8 * 128 * 2 == 131072
    # kivi's per-group scales grow with head_dim: 1 extra bit per coordinate
    assert kv_bytes_per_token(model, catalog.get_kv("kivi-4")) == 2 * 32 * 8 * 128 * 5 / 8


def test_gguf_weight_bytes_match_the_smollm2_file(catalog: Catalog) -> None:
    """The bundled Q4_1 GGUF: 66,355,200 B of Q4_1 layers and a 30,081,024 B Q8_0 tied embedding (576 columns
    are not a multiple of 256, so llama.cpp's Q6_K output falls back to Q8_0)."""
    model = catalog.get_model("smollm2-135m")
    wb = weight_bytes(catalog, model, "gguf-q4_1")
    assert wb.body == 66_355_200 + 140_544  # Q4_1 layers + F32 norms
    assert wb.embedding == 30_081_024
    assert wb.lm_head == 0
    assert wb.total == 96_576_768  # every tensor byte of the GGUF
    f16 = weight_bytes(catalog, model, "gguf-f16")
    assert f16.total == (134_515_008 - 35_136) * 2 + 35_136 * 4


@pytest.mark.parametrize(("fmt", "bits"), [("bf16", 16), ("fp8", 8), ("int8", 8), ("int4", 4.25), ("b1.58", 2.0)])
def test_weight_bytes_by_dtype(catalog: Catalog, fmt: str, bits: float) -> None:
    model = catalog.get_model("llama-3.1-8b")
    norms = 65 * 4096
    assert weight_bytes(catalog, model, fmt).total == (8_030_261_248 - norms) * bits / 8 + norms * 2


def test_70b_does_not_fit_one_l4_and_the_max_batch_follows_free_memory(catalog: Catalog) -> None:
    vllm = catalog.get_engine("vllm")
    model, l4 = catalog.get_model("llama-3.1-70b"), catalog.get_hardware("l4")
    plan = plan_memory(catalog, model, l4, "bf16", "fp16", 1, vllm, 1, 2000)
    assert not plan.fits and plan.max_batch == 0 and plan.max_context == 0
    h100 = catalog.get_hardware("h100-sxm")
    plan = plan_memory(
        catalog, catalog.get_model("llama-3.1-8b"), h100, "fp8", "fp8", 1, catalog.get_engine("trtllm"), 1, 2000
    )
    free = 80e9 * 0.95 - 8_030_261_248 - plan.activations
    assert plan.max_batch == int(free // (65536 * 2000))
    assert plan.limit == "memory"


def test_tensor_parallel_splits_weights_and_kv_heads(catalog: Catalog) -> None:
    vllm, model, h100 = catalog.get_engine("vllm"), catalog.get_model("llama-3.1-70b"), catalog.get_hardware("h100-sxm")
    one = plan_memory(catalog, model, h100, "fp8", "fp8", 1, vllm, 8, 1000)
    four = plan_memory(catalog, model, h100, "fp8", "fp8", 4, vllm, 8, 1000)
    assert four.weights == pytest.approx(one.weights / 4)
    assert four.kv_cache == pytest.approx(one.kv_cache / 4)
    sixteen = plan_memory(catalog, model, h100, "fp8", "fp8", 16, vllm, 8, 1000)  # 8 KV heads: replicated past 8
    assert sixteen.kv_cache == pytest.approx(one.kv_cache / 8)
