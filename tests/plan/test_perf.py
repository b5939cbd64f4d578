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
