"""Prediction against measurement. An `Observation` is one measured number of one configuration (this CPU, or a
published GPU figure with its source); `predict` computes the planner's value for it, `evaluate` the error of
each point, and `fit` the efficiency factors that best explain the points marked `role: calibrate` (least
squares on log error over a grid, refined), which are then excluded from the error statistics."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from margin.errors import ConfigError
from margin.plan.catalog import Catalog, EfficiencyClass, Provenance, Strict
from margin.plan.econ import device_watts
from margin.plan.perf import ServePoint, Setup, serve

Metric = Literal["ttft_ms", "tpot_ms", "decode_tok_s", "prefill_tok_s", "output_tok_s", "j_per_output_token"]


class Observation(Strict):
    id: str
    group: str  # e.g. "cpu" or "gpu_published": medians are reported per group
    model: str
    hardware: str
    devices: int = Field(1, gt=0)
    weights: str
    kv: str = "fp16"
    engine: str = "vllm"
    threads: int | None = None
    input_tokens: int = Field(gt=0)
    output_tokens: int = Field(gt=0)
    batch: int | None = Field(None, gt=0, description="None: the largest batch that fits (maximum throughput)")
    metric: Metric
    value: float = Field(gt=0)
    role: Literal["calibrate", "validate"] = "validate"
    source: Provenance
    note: str | None = None

    def setup(self, catalog: Catalog, efficiency: EfficiencyClass | None = None) -> Setup:
        return Setup(
            catalog,
            self.model,
            self.hardware,
            self.weights,
            self.kv,
            self.devices,
            self.engine,
            self.threads,
            efficiency,
        )


class ObservationsFile(Strict):
    schema_: str = Field(alias="schema")
    version: int
    read: str
    points: list[Observation]


def load_observations(path: Path | None = None) -> list[Observation]:
    """The published points bundled with margin (`data/published.yaml`) or a file of the same shape."""
    from importlib import resources

    try:
        if path is None:
            text = resources.files("margin.plan").joinpath("data/published.yaml").read_text("utf-8")
        else:
            text = path.read_text("utf-8")
        return ObservationsFile.model_validate(yaml.safe_load(text)).points
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"invalid observations file {path or 'published.yaml'}: {exc}") from exc


def point_for(obs: Observation, setup: Setup) -> ServePoint:
    batch = obs.batch
    if batch is None:
        batch = max(1, setup.memory(1, obs.input_tokens + obs.output_tokens).max_batch)
    return serve(setup, obs.input_tokens, obs.output_tokens, batch)


def predict(obs: Observation, catalog: Catalog, efficiency: EfficiencyClass | None = None) -> float:
    setup = obs.setup(catalog, efficiency)
    point = point_for(obs, setup)
    if obs.metric == "ttft_ms":
        return point.ttft_s * 1000
    if obs.metric == "tpot_ms":
        return point.tpot_s * 1000
    if obs.metric == "decode_tok_s":
        return 1 / point.tpot_s
    if obs.metric == "prefill_tok_s":
        return obs.input_tokens / point.prefill.seconds
    if obs.metric == "output_tok_s":
        return point.output_tokens_per_s
    return device_watts(setup, 1.0) * setup.devices / point.output_tokens_per_s


@dataclass(frozen=True, slots=True)
class PointResult:
    obs: Observation
    predicted: float
    bound: str

    @property
    def error_pct(self) -> float:
        return (self.predicted - self.obs.value) / self.obs.value * 100

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.obs.id,
            "group": self.obs.group,
            "role": self.obs.role,
            "metric": self.obs.metric,
            "config": {
                k: v
                for k, v in self.obs.model_dump(exclude={"id", "group", "metric", "value", "role", "source"}).items()
                if v is not None
            },
            "predicted": round(self.predicted, 6),
            "measured": self.obs.value,
            "error_pct": round(self.error_pct, 2),
            "bound": self.bound,
            "source": self.obs.source.model_dump(exclude_none=True),
        }


def evaluate(
    points: list[Observation], catalog: Catalog, calibrations: dict[str, EfficiencyClass] | None = None
) -> list[PointResult]:
    """Predict every point, with the calibrated efficiency of its hardware when there is one."""
    results = []
    for obs in points:
        eff = calibrated(catalog, calibrations or {}, obs.hardware)
        setup = obs.setup(catalog, eff)
        point = point_for(obs, setup)
        bound = {"ttft_ms": point.prefill.bound, "prefill_tok_s": point.prefill.bound}.get(obs.metric, point.bound)
        if obs.metric in ("tpot_ms", "decode_tok_s"):
            bound = point.decode.bound
        results.append(PointResult(obs, predict(obs, catalog, eff), bound))
    return results


def calibrated(catalog: Catalog, calibrations: dict[str, EfficiencyClass], hardware: str) -> EfficiencyClass | None:
    """A calibration keyed by the hardware, else by its efficiency class, else None (the class prior)."""
    if hardware in calibrations:
        return calibrations[hardware]
    return calibrations.get(catalog.get_hardware(hardware).efficiency_class)


def median_abs_error(results: list[PointResult], group: str) -> float | None:
    errors = [abs(r.error_pct) for r in results if r.obs.group == group and r.obs.role == "validate"]
    return statistics.median(errors) if errors else None


def fit(points: list[Observation], catalog: Catalog, base: EfficiencyClass, source: Provenance) -> EfficiencyClass:
    """Compute and memory efficiencies minimizing Σ log(predicted/measured)² over `points`."""
    if not points:
        raise ConfigError("no calibration points")

    def loss(compute: float, memory: float) -> float:
        eff = replace_eff(base, compute, memory)
        return sum(math.log(predict(p, catalog, eff) / p.value) ** 2 for p in points)

    grid = [0.02 * 1.2**i for i in range(27)]  # 0.02 … 2.3
    best = min(((loss(c, m), c, m) for c in grid for m in grid), key=lambda t: t[0])
    step = 1.2
    for _ in range(12):  # refine around the best cell
        step = math.sqrt(step)
        candidates = [(best[1] * a, best[2] * b) for a in (1 / step, 1, step) for b in (1 / step, 1, step)]
        best = min([best, *((loss(c, m), c, m) for c, m in candidates if 0 < c <= 4 and 0 < m <= 4)])
    return replace_eff(base, round(best[1], 4), round(best[2], 4), source)


def replace_eff(
    base: EfficiencyClass, compute: float, memory: float, source: Provenance | None = None
) -> EfficiencyClass:
    changes: dict[str, Any] = {"compute": compute, "memory": memory}
    if source is not None:
        changes["source"] = source
    return base.model_copy(update=changes)


__all__ = [
    "Observation",
    "PointResult",
    "evaluate",
    "fit",
    "load_observations",
    "median_abs_error",
    "predict",
]
