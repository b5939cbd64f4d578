"""Roofline arithmetic on hand-computed cases."""

from __future__ import annotations

import pytest

from margin.plan.catalog import Catalog, EfficiencyClass
from margin.plan.memory import weight_bytes
from margin.plan.roofline import Device, _touched_experts, decode_work, peak_flops, prefill_work

# Llama-3.1-8B: layers 4096x4096 q/o, 4096x1024 k/v, 3 x 4096x14336 MLP; 128256 x 4096 LM head
BODY = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
HEAD = 128256 * 4096
NORMS = 65 * 4096
KV_BF16 = 2 * 32 * 8 * 128 * 2


def test_memory_bound_decode_llama_8b_bf16_h100_batch_1(catalog: Catalog, ideal: EfficiencyClass) -> None:
    """Batch 1 at 1,000 cached tokens: one step reads every weight but the input embedding (15.01 GB) and
    1,001 tokens of KV cache; at 3.35 TB/s that is 4.52 ms, against 0.015 ms of math."""
    model = catalog.get_model("llama-3.1-8b")
    wb = weight_bytes(catalog, model, "bf16")
    work = decode_work(model, wb, catalog.get_kv("bf16"), 1, 1000)
    assert work.weight_bytes == (BODY + HEAD + NORMS) * 2
    assert work.kv_bytes == 1001 * KV_BF16
    assert work.matmul_flops == 2 * (BODY + HEAD)
    assert work.attention_flops == 4 * 32 * 32 * 128 * 1001  # the new token attends to 1,001 positions
    step = Device(catalog.get_hardware("h100-sxm"), ideal).time(work, "bf16", "fp16")
    hand_bytes = (BODY + HEAD + NORMS) * 2 + 1001 * KV_BF16 + 32 * (6 * 4096 + 3 * 14336) * 2
    assert step.bound == "memory"
    assert step.seconds == pytest.approx(hand_bytes / 3.35e12)
    assert step.seconds == pytest.approx(4.5208e-3, rel=1e-4)
    assert step.memory_s / step.compute_s > 250


def test_prefill_of_a_long_prompt_is_compute_bound(catalog: Catalog, ideal: EfficiencyClass) -> None:
    model = catalog.get_model("llama-3.1-8b")
    work = prefill_work(model, weight_bytes(catalog, model, "fp8"), catalog.get_kv("fp8"), 2048)
    assert work.matmul_flops == 2048 * 2 * BODY + 2 * HEAD  # logits of the last token only
    assert work.attention_flops == 4 * 32 * 32 * 128 * 2048 * 2049 / 2
    step = Device(catalog.get_hardware("h100-sxm"), ideal).time(work, "fp8", "fp8")
    assert step.bound == "compute"
    assert step.compute_s == pytest.approx(work.flops / 1978.9e12)


def test_tensor_parallel_adds_ring_all_reduces(catalog: Catalog, ideal: EfficiencyClass) -> None:
    model = catalog.get_model("llama-3.1-70b")
    work = decode_work(model, weight_bytes(catalog, model, "fp8"), catalog.get_kv("fp8"), 64, 1000)
    two = Device(catalog.get_hardware("h100-sxm"), ideal, devices=2).time(work, "fp8", "fp8")
    payload = 64 * 8192 * 2
    assert work.collectives == 160
    assert two.interconnect_s == pytest.approx(160 * (2 * 1 / 2 * payload / 450e9))
    one = Device(catalog.get_hardware("h100-sxm"), ideal).time(work, "fp8", "fp8")
    assert two.memory_s == pytest.approx(one.memory_s / 2)
    with pytest.raises(ValueError, match="interconnect"):
        Device(catalog.get_hardware("apple-m2-ultra"), ideal, devices=2).time(work, "fp8", "fp8")


def test_missing_dtypes_fall_back(catalog: Catalog) -> None:
    assert peak_flops(catalog.get_hardware("a100-80gb"), "fp8") == (312e12, "bf16")
    assert peak_flops(catalog.get_hardware("b200"), "fp4") == (9000e12, "fp4")
    assert peak_flops(catalog.get_hardware("h100-sxm"), "fp4") == (1978.9e12, "fp8")


def test_moe_reads_only_the_experts_its_tokens_route_to(catalog: Catalog) -> None:
    assert _touched_experts(8, 2, 1) == pytest.approx(2)
    assert _touched_experts(128, 8, 1) == pytest.approx(8)
    assert _touched_experts(128, 8, 4096) == pytest.approx(128)
    model = catalog.get_model("mixtral-8x7b")
    wb = weight_bytes(catalog, model, "bf16")
    one = decode_work(model, wb, catalog.get_kv("fp16"), 1, 100)
    many = decode_work(model, wb, catalog.get_kv("fp16"), 512, 100)
    expert = 3 * 4096 * 14336 * 2
    assert many.weight_bytes - one.weight_bytes == pytest.approx(32 * 6 * expert, rel=1e-6)


def test_cpu_threads_scale_compute_and_cap_bandwidth(catalog: Catalog, ideal: EfficiencyClass) -> None:
    hw = catalog.get_hardware("cpu-x86-32c")
    four = Device(hw, ideal, threads=4)
    assert four.flops("fp32")[0] == pytest.approx(3.3e12 * 4 / 16)
    assert four.bandwidth == pytest.approx(4 * 12e9)
    assert Device(hw, ideal, threads=16).bandwidth == pytest.approx(120e9)


def test_tensor_parallel_over_pcie_can_be_interconnect_bound(catalog: Catalog) -> None:
    """70B INT4 on 4 L40S (PCIe Gen4, 32 GB/s a direction): at batch 64 the 160 all-reduces of 1 MiB take longer
    than reading each device's quarter of the weights."""
    from margin.plan.perf import Setup

    setup = Setup(catalog, "llama-3.1-70b", "l40s", "int4", "fp8", devices=4)
    step = setup.decode(64, 1000)
    assert step.bound == "interconnect"
    assert step.interconnect_s > step.memory_s > step.compute_s
    assert Setup(catalog, "llama-3.1-70b", "h100-sxm", "int4", "fp8", devices=4).decode(64, 1000).bound == "memory"
