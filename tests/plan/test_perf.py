"""The serving model and the SLO search."""

from __future__ import annotations

import pytest

from margin.plan.catalog import Catalog, EfficiencyClass
from margin.plan.perf import Setup, Slo, at_slo, serve


def test_batch_1_point_is_prefill_then_decode_steps(catalog: Catalog, ideal: EfficiencyClass) -> None:
    setup = Setup(catalog, "smollm2-135m", "cpu-this-machine", "gguf-q4_1", "fp16", 1, "llamacpp", 2, ideal)
    point = serve(setup, 128, 64, 1)
    prefill = setup.prefill(128).seconds
    decode = setup.decode(1, 128 + 63 / 2).seconds
    assert point.ttft_s == pytest.approx(prefill)
    assert point.tpot_s == pytest.approx(decode)
    assert point.requests_per_s == pytest.approx(1 / (prefill + 63 * decode))
    assert point.output_tokens_per_s == pytest.approx(64 * point.requests_per_s)
    assert point.e2e_s == pytest.approx(prefill + 63 * decode)


def test_long_prompts_prefill_in_engine_chunks(catalog: Catalog, ideal: EfficiencyClass) -> None:
    setup = Setup(catalog, "smollm2-135m", "cpu-this-machine", "gguf-q4_1", "fp16", 1, "llamacpp", 2, ideal)
    whole = setup.prefill(1536)
    assert whole.flops > 3 * setup.prefill(512).flops  # later chunks attend to the earlier ones
    assert whole.seconds > 3 * setup.prefill(512).seconds


def test_other_sequences_prefills_stall_decode(catalog: Catalog) -> None:
    setup = Setup(catalog, "llama-3.1-8b", "h100-sxm", "fp8", "fp8")
    point = serve(setup, 1000, 100, 32)
    assert point.tpot_s == pytest.approx(point.decode.seconds + 31 * point.prefill.seconds / 99)
    assert point.ttft_s == pytest.approx(point.prefill.seconds + point.decode.seconds)


def test_at_slo_picks_the_largest_batch_meeting_tpot(catalog: Catalog) -> None:
    setup = Setup(catalog, "llama-3.1-8b", "l40s", "fp8", "fp8")
    capacity = at_slo(setup, 1000, 200, Slo(tpot_s=0.030))
    assert capacity.point is not None and capacity.limit == "tpot_slo"
    assert capacity.point.tpot_s <= 0.030
    assert serve(setup, 1000, 200, capacity.point.batch + 1).tpot_s > 0.030


def test_at_slo_reports_memory_and_impossible_slos(catalog: Catalog) -> None:
    big = Setup(catalog, "llama-3.1-70b", "l4", "bf16", "fp16")
    assert at_slo(big, 1000, 200, Slo()).point is None
    assert at_slo(big, 1000, 200, Slo()).limit == "memory"
    small = Setup(catalog, "llama-3.1-8b", "h100-sxm", "fp8", "fp8")
    hopeless = at_slo(small, 1000, 200, Slo(ttft_s=1e-6))
    assert hopeless.point is None and hopeless.limit == "ttft_slo"
    unbounded = at_slo(small, 1000, 200, Slo())
    assert unbounded.point is not None and unbounded.point.batch == 256 and unbounded.limit == "engine"
    too_long = at_slo(Setup(catalog, "smollm2-135m", "h100-sxm", "bf16"), 1000, 200, Slo(), tail_context=9000)
    assert too_long.point is None and too_long.limit == "context"


def test_fp8_weights_on_an_a100_are_weight_only_at_its_16_bit_rate(catalog: Catalog) -> None:
    """The A100 has no fp8 units: fp8 weights are stored and read in 8 bits and multiplied in bf16 (W8A16), at
    the A100's 16-bit rate (bf16 = fp16 = 312 TFLOPS), never at an fp8 rate it does not have."""
    a100 = catalog.get_hardware("a100-80gb")
    assert "fp8" not in a100.peak_tflops and a100.peak_tflops["bf16"] == a100.peak_tflops["fp16"] == 312
    fp8, bf16 = (Setup(catalog, "llama-3.1-8b", "a100-80gb", w) for w in ("fp8", "bf16"))
    assert (fp8.weights_compute, fp8.matmul_dtype) == ("fp8", "bf16")
    step, step16 = fp8.prefill(2048), bf16.prefill(2048)  # compute-bound: the same math, the same time
    assert step.matmul_dtype == "bf16" and step.compute_s == pytest.approx(step16.compute_s)
    assert fp8.weight_bytes.body == pytest.approx(bf16.weight_bytes.body / 2, rel=1e-3)  # half the bytes (norms 16-bit)
    assert fp8.describe()["matmul_peak_tflops"] == 312
    h100 = Setup(catalog, "llama-3.1-8b", "h100-sxm", "fp8")  # with fp8 units: W8A8 at the fp8 rate
    assert h100.matmul_dtype == "fp8" and h100.prefill(2048).matmul_dtype == "fp8"
