"""Placement: constraints are honoured, the Pareto set is not dominated, each option names its binding one."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from margin.plan.catalog import Catalog
from margin.plan.placement import pareto, place
from margin.plan.render import pareto_png
from margin.plan.workload import Workload

BASE = {
    "model": "llama-3.1-8b",
    "rate_rps": 10,
    "input_tokens": {"dist": "lognormal", "mean": 1000, "sigma": 0.5},
    "output_tokens": 250,
    "slo": {"ttft_ms": 1500, "tpot_ms": 60},
    "search": {"weights": ["bf16", "fp8", "int4"], "kv": ["fp16", "fp8"], "devices": [1, 2]},
}


def test_eu_only_placement_under_a_carbon_cap(catalog: Catalog) -> None:
    workload = Workload.model_validate(
        BASE | {"constraints": {"jurisdictions": ["EU"], "max_gco2e_per_1k_tokens": 0.05}}
    )
    result = place(catalog, workload)
    assert result.options, result.rejected
    assert result.rejected["jurisdiction"] > 0 and result.rejected["carbon"] > 0
    for option in result.options:
        assert catalog.get_region(option.econ.region).jurisdiction == "EU"
        assert option.econ.co2e_g_per_1k_tokens <= 0.05
        point = option.capacity.point
        assert point is not None and point.tpot_s <= 0.060
        assert option.econ.replicas * point.requests_per_s >= 10 - 1e-9
        assert option.binding[0] in option.slacks and option.binding[1] >= 0
    front = result.pareto
    for a in front:  # nobody is both cheaper-or-equal and cleaner-or-equal while strictly better on one
        for b in result.options:
            assert not (
                b.econ.usd_per_1k_tokens <= a.econ.usd_per_1k_tokens
                and b.econ.co2e_g_per_1k_tokens <= a.econ.co2e_g_per_1k_tokens
                and (
                    b.econ.usd_per_1k_tokens < a.econ.usd_per_1k_tokens
                    or b.econ.co2e_g_per_1k_tokens < a.econ.co2e_g_per_1k_tokens
                )
            )
    costs = [o.econ.usd_per_1k_tokens for o in front]
    assert costs == sorted(costs)
    assert result.cheapest[0].econ.usd_per_1k_tokens == costs[0]


def test_budget_binds_and_rejects(catalog: Catalog) -> None:
    free = place(catalog, Workload.model_validate(BASE))
    cheapest = free.cheapest[0].econ.usd_per_month
    budget = cheapest * Decimal("1.02")
    tight = place(catalog, Workload.model_validate(BASE | {"constraints": {"max_usd_per_month": str(budget)}}))
    assert tight.rejected["budget"] > 0
    assert all(o.econ.usd_per_month <= budget for o in tight.options)
    best = tight.cheapest[0]
    assert best.slacks["budget"] == pytest.approx(float(1 - cheapest / budget))
    assert best.binding == min(best.slacks.items(), key=lambda kv: kv[1])
    assert best.binding[1] <= best.slacks["budget"] < 0.02


def test_an_impossible_slo_leaves_nothing_feasible(catalog: Catalog) -> None:
    workload = Workload.model_validate(BASE | {"slo": {"ttft_ms": 0.001}})
    result = place(catalog, workload)
    assert not result.options and result.rejected["ttft_slo"] > 0
    assert pareto([]) == []


def test_hardware_filter_and_json(catalog: Catalog, tmp_path: Path) -> None:
    workload = Workload.model_validate(BASE | {"constraints": {"hardware": ["l4", "l40s", "h100-sxm"]}})
    result = place(catalog, workload)
    assert {o.setup.hardware_key for o in result.options} <= {"l4", "l40s", "h100-sxm"}
    data = result.to_json(top=3)
    assert len(data["cheapest"]) == 3 and data["feasible"] == len(result.options)
    first = data["pareto"][0]
    assert {"capacity_limit", "binding", "economics", "memory", "per_replica"} <= set(first)
    assert isinstance(first["economics"]["usd_per_1k_tokens"], str)  # money as a decimal string
    png = tmp_path / "pareto.png"
    pareto_png(result, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cpu_and_soc_are_searched_with_llamacpp_formats(catalog: Catalog) -> None:
    workload = Workload.model_validate(
        BASE
        | {
            "model": "smollm2-135m",
            "rate_rps": 0.1,
            "input_tokens": 100,
            "output_tokens": 50,
            "constraints": {"hardware": ["cpu-this-machine"]},
        }
    )
    result = place(catalog, workload)
    assert result.options
    assert {o.setup.weights for o in result.options} <= {"gguf-f16", "gguf-q8_0", "gguf-q4_k"}
    assert all(o.setup.engine_key == "llamacpp" and o.econ.region == "local" for o in result.options)
