"""`margin plan` for one configuration: the numbers behind its breakdown, as one JSON-ready dict."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from margin.plan.econ import economics
from margin.plan.memory import GB, MemoryPlan
from margin.plan.perf import MAX_BATCH, MAX_RATE_RPS, MAX_TOKENS, Setup, Slo, at_slo, serve
from margin.specs import MAX_OVERHEAD


def check_inputs(
    tokens: tuple[int, int, int | None],
    slo_ms: tuple[float | None, float | None],
    rate: float | None,
    overheads: tuple[Decimal, Decimal],
) -> None:
    """ValueError naming the option when a number is out of range, NaN or infinite."""
    (input_tokens, output_tokens, batch) = tokens
    if not (1 <= input_tokens <= MAX_TOKENS and 1 <= output_tokens <= MAX_TOKENS):
        raise ValueError(f"--input and --output must be 1 to {MAX_TOKENS:,} tokens")
    if batch is not None and not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"--batch must be 1 to {MAX_BATCH:,}")
    if any(ms is not None and not (math.isfinite(ms) and ms > 0) for ms in slo_ms):
        raise ValueError("--ttft-ms and --tpot-ms must be positive and finite")
    if rate is not None and not (math.isfinite(rate) and 0 < rate <= MAX_RATE_RPS):
        raise ValueError(f"--rate must be above 0 and at most {MAX_RATE_RPS:,.0f} requests/s")
    if any(not (o.is_finite() and 0 <= o <= MAX_OVERHEAD) for o in overheads):
        raise ValueError(f"--energy-overhead and --network-overhead must be 0 to {MAX_OVERHEAD}")


def _why_not(setup: Setup, memory: MemoryPlan, context: int, limit: str) -> str:
    """Why a configuration cannot serve the request shape (the breakdown's first line says so)."""
    if context > setup.model.context:
        return f"{context:,} tokens of context exceed the model's {setup.model.context:,}"
    if memory.peak > memory.capacity:
        return f"needs {memory.peak / GB:,.1f} GB per device, has {memory.capacity / GB:,.1f}"
    return f"no batch meets the {limit.replace('_slo', '').upper()} SLO" if limit.endswith("_slo") else limit


def one_config(
    setup: Setup,
    input_tokens: int,
    output_tokens: int,
    batch: int | None,
    slo_ms: tuple[float | None, float | None],
    region: str | None,
    rate: float | None,
    overheads: tuple[Decimal, Decimal] = (Decimal(0), Decimal(0)),
) -> dict[str, Any]:
    """Performance at `batch` (default: the largest the SLOs and memory allow), memory, and economics in `region`.
    A configuration that cannot serve even one sequence is still broken down at batch 1, with the reason."""
    check_inputs((input_tokens, output_tokens, batch), slo_ms, rate, overheads)
    if region is None and (rate is not None or any(overheads)):  # they only change the economics of a region
        raise ValueError("--rate, --energy-overhead and --network-overhead price a region: give --region too")
    if (problem := setup.parallel_problem()) is not None:
        raise ValueError(f"{setup.label()} cannot run: {problem}")
    context = input_tokens + output_tokens
    slo = Slo(*(None if ms is None else ms / 1000 for ms in slo_ms))
    if batch is None:
        capacity = at_slo(setup, input_tokens, output_tokens, slo, input_tokens, context)
        feasible, limit = capacity.point is not None, capacity.limit
        point = capacity.point or serve(setup, input_tokens, output_tokens, 1)
        memory = capacity.memory if capacity.point else setup.memory(1, context)
    else:
        point, memory = serve(setup, input_tokens, output_tokens, batch), setup.memory(batch, context)
        feasible, limit = memory.peak <= memory.capacity and context <= setup.model.context, "given"
    econ = None
    if region is not None:
        econ = economics(setup, region, point, rate, *overheads)
        if econ is None:
            raise ValueError(f"region {region!r} does not offer (or cannot price) {setup.hardware_key}")
    eff = setup.eff
    return {
        "label": setup.label(),
        "config": setup.describe(),
        "feasible": feasible,
        "infeasible_because": None if feasible else _why_not(setup, memory, context, limit),
        "batch_limit": limit,
        "slo_ms": {"ttft": slo_ms[0], "tpot": slo_ms[1]},
        "performance": point.to_json(),
        "memory": memory.to_json(),
        "economics": None if econ is None else econ.to_json(),
        "efficiency": eff.model_dump(
            mode="json", include={"compute", "compute_untiled", "compute_decode", "memory", "source"}
        ),
        "catalog_versions": setup.catalog.versions,
    }
