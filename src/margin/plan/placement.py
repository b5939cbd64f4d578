"""Placement: search hardware × devices × weight format × KV format × region for the configurations that serve a
workload within its SLOs and constraints, cheapest first, and the cost-carbon Pareto set.

Each feasible option reports the constraint closest to binding (smallest slack: 1 − used / allowed) among the
SLOs at its batch, memory, budget and carbon, and what caps its batch per replica (`capacity_limit`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from margin.economics.carbon import GridTable
from margin.errors import ConfigError
from margin.plan.catalog import Catalog, EfficiencyClass, Hardware
from margin.plan.econ import Economics, economics
from margin.plan.perf import Capacity, Setup, at_slo
from margin.plan.workload import Workload

# a search format → the GGUF type llama.cpp engines use for it
GGUF_FOR = {
    "fp32": "gguf-f16",
    "bf16": "gguf-f16",
    "fp16": "gguf-f16",
    "fp8": "gguf-q8_0",
    "int8": "gguf-q8_0",
    "fp4": "gguf-q4_k",
    "int4": "gguf-q4_k",
    "b1.58": "gguf-tq1_0",
}
LLAMACPP_KINDS = ("cpu", "soc")
TENSOR_PARALLEL = "heads_not_divisible"  # rejected: the model's heads do not split over the devices (vLLM's rule)


@dataclass(frozen=True)
class Option:
    setup: Setup
    capacity: Capacity
    econ: Economics
    slacks: dict[str, float]

    @property
    def binding(self) -> tuple[str, float]:
        name = min(self.slacks, key=lambda k: self.slacks[k])
        return name, self.slacks[name]

    def to_json(self) -> dict[str, Any]:
        assert self.capacity.point is not None
        name, slack = self.binding
        return {
            "config": self.setup.describe(),
            "region": self.econ.region,
            "capacity_limit": self.capacity.limit,
            "binding": name,
            "binding_slack_pct": round(slack * 100, 2),
            "slack_pct": {k: round(v * 100, 2) for k, v in self.slacks.items()},
            "per_replica": self.capacity.point.to_json(),
            "memory": self.capacity.memory.to_json(),
            "economics": self.econ.to_json(),
        }


@dataclass
class Placement:
    workload: Workload
    options: list[Option]
    searched: int
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def cheapest(self) -> list[Option]:
        return sorted(self.options, key=lambda o: (o.econ.usd_per_1k_tokens, o.econ.co2e_g_per_1k_tokens))

    @property
    def pareto(self) -> list[Option]:
        return pareto(self.options)

    def to_json(self, top: int = 10) -> dict[str, Any]:
        return {
            "workload": self.workload.model_dump(mode="json"),
            "searched": self.searched,
            "feasible": len(self.options),
            "rejected": dict(self.rejected.most_common()),
            "pareto": [o.to_json() for o in self.pareto],
            "cheapest": [o.to_json() for o in self.cheapest[:top]],
        }


def pareto(options: list[Option]) -> list[Option]:
    """Options no other option beats on both $/1K tokens and gCO2e/1K tokens, cheapest first."""
    front: list[Option] = []
    for option in sorted(options, key=lambda o: (o.econ.usd_per_1k_tokens, o.econ.co2e_g_per_1k_tokens)):
        if not front or option.econ.co2e_g_per_1k_tokens < front[-1].econ.co2e_g_per_1k_tokens:
            front.append(option)
    return front


def weight_formats(hw: Hardware, workload: Workload) -> list[str]:
    if hw.kind in LLAMACPP_KINDS:
        return sorted({w if w.startswith("gguf-") else GGUF_FOR.get(w, w) for w in workload.search.weights})
    return [w for w in workload.search.weights if not w.startswith("gguf-")]


def candidate_setups(catalog: Catalog, workload: Workload, calibrations: dict[str, EfficiencyClass]) -> list[Setup]:
    allowed = workload.constraints.hardware
    setups: list[Setup] = []
    for key, hw in catalog.hardware.items():
        if allowed is not None and key not in allowed:
            continue
        llamacpp = hw.kind in LLAMACPP_KINDS
        engine = workload.search.cpu_engine if llamacpp else workload.search.engine
        devices = [1] if llamacpp or hw.interconnect_gbs == 0 else workload.search.devices
        eff = calibrations.get(key) or calibrations.get(hw.efficiency_class)
        kvs = ["fp16"] if llamacpp else workload.search.kv
        for count in devices:
            for weights in weight_formats(hw, workload):
                setups.extend(
                    Setup(catalog, workload.model, key, weights, kv, count, engine, hw.cores, eff) for kv in kvs
                )
    return setups


def _slacks(workload: Workload, capacity: Capacity, econ: Economics, tail_ttft: float) -> dict[str, float]:
    assert capacity.point is not None
    slo = workload.slo.slo()
    slacks = {"memory": 1 - capacity.memory.peak / capacity.memory.capacity}
    if slo.ttft_s is not None:
        slacks["ttft_slo"] = 1 - tail_ttft / slo.ttft_s
    if slo.tpot_s is not None:
        slacks["tpot_slo"] = 1 - capacity.point.tpot_s / slo.tpot_s
    if slo.e2e_s is not None:
        slacks["e2e_slo"] = 1 - capacity.point.e2e_s / slo.e2e_s
    limits = workload.constraints
    if limits.max_usd_per_month is not None:
        slacks["budget"] = float(1 - econ.usd_per_month / limits.max_usd_per_month)
    if limits.max_gco2e_per_1k_tokens is not None:
        slacks["carbon"] = 1 - econ.co2e_g_per_1k_tokens / limits.max_gco2e_per_1k_tokens
    return slacks


def _regions(catalog: Catalog, workload: Workload, hardware: str) -> list[str]:
    limits = workload.constraints
    keys = []
    for key, region in catalog.regions.items():
        if hardware not in region.offers or (region.owned and not limits.include_owned):
            continue
        if limits.regions is not None and key not in limits.regions:
            continue
        keys.append(key)
    return keys


def check_constraints(catalog: Catalog, workload: Workload) -> None:
    """A constraint naming hardware, a region or a jurisdiction the catalog lacks is an error, not an empty search."""
    limits = workload.constraints
    jurisdictions = {region.jurisdiction for region in catalog.regions.values()}
    for what, given, known in (
        ("hardware", limits.hardware, set(catalog.hardware)),
        ("region", limits.regions, set(catalog.regions)),
        ("jurisdiction", limits.jurisdictions, jurisdictions),
    ):
        unknown = sorted(set(given or ()) - known)
        if unknown:
            raise ConfigError(
                f"constraints name unknown {what} {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}"
            )


def place(catalog: Catalog, workload: Workload, calibrations: dict[str, EfficiencyClass] | None = None) -> Placement:
    catalog.get_model(workload.model)
    check_constraints(catalog, workload)
    grid, result = GridTable.bundled(), Placement(workload, [], 0)
    mean_in, mean_out, slo = workload.mean_input(), workload.mean_output(), workload.slo.slo()
    for setup in candidate_setups(catalog, workload, calibrations or {}):
        regions = _regions(catalog, workload, setup.hardware_key)
        if not regions:
            continue
        result.searched += len(regions)
        if setup.parallel_problem() is not None:  # a plan vLLM would refuse to load
            result.rejected[TENSOR_PARALLEL] += len(regions)
            continue
        capacity = at_slo(setup, mean_in, mean_out, slo, workload.tail_input(), workload.tail_context())
        if capacity.point is None:
            result.rejected[capacity.limit] += len(regions)
            continue
        wait = capacity.point.decode.seconds if capacity.point.batch > 1 else 0.0
        tail_ttft = setup.prefill(workload.tail_input()).seconds + wait
        for region in regions:
            verdict = _option(workload, setup, capacity, region, tail_ttft, grid)
            if isinstance(verdict, str):
                result.rejected[verdict] += 1
            else:
                result.options.append(verdict)
    return result


def _option(
    workload: Workload, setup: Setup, capacity: Capacity, region: str, tail_ttft: float, grid: GridTable
) -> Option | str:
    """The option of serving the workload with `setup` in `region`, or why it is rejected."""
    limits = workload.constraints
    if limits.jurisdictions is not None and setup.catalog.get_region(region).jurisdiction not in limits.jurisdictions:
        return "jurisdiction"
    assert capacity.point is not None
    econ = economics(
        setup, region, capacity.point, workload.rate_rps, workload.energy_overhead, workload.network_overhead, grid
    )
    if econ is None:
        return "unpriced"
    if limits.max_gco2e_per_1k_tokens is not None and econ.co2e_g_per_1k_tokens > limits.max_gco2e_per_1k_tokens:
        return "carbon"
    if limits.max_usd_per_month is not None and econ.usd_per_month > limits.max_usd_per_month:
        return "budget"
    return Option(setup, capacity, econ, _slacks(workload, capacity, econ, tail_ttft))
