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

from pydantic import Field, ValidationError

from margin.errors import ConfigError
from margin.plan.catalog import Catalog, EfficiencyClass, Provenance, Strict
from margin.plan.econ import device_watts
from margin.plan.perf import ServePoint, Setup, serve
from margin.userfiles import load_yaml, read_text, validation_message

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
            text = read_text(path, "observations file")
        return ObservationsFile.model_validate(load_yaml(text, f"observations file {path}")).points
    except ValidationError as exc:
        raise ConfigError(f"invalid observations file {path or 'published.yaml'}: {validation_message(exc)}") from exc


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


FIT_DEFAULT = ("compute", "memory")


def fit(
    points: list[Observation],
    catalog: Catalog,
    base: EfficiencyClass,
    source: Provenance,
    params: tuple[str, str] = FIT_DEFAULT,
) -> EfficiencyClass:
    """The two efficiency factors `params` (default compute and memory) minimizing Σ log(predicted/measured)²
    over `points`: a coarse grid, then refined around its best cell."""
    if not points:
        raise ConfigError("no calibration points")

    def loss(a: float, b: float) -> float:
        eff = base.model_copy(update={params[0]: a, params[1]: b})
        return sum(math.log(predict(p, catalog, eff) / p.value) ** 2 for p in points)

    grid = [0.02 * 1.2**i for i in range(27)]  # 0.02 … 2.3
    best = min(((loss(a, b), a, b) for a in grid for b in grid), key=lambda t: t[0])
    step = 1.2
    for _ in range(12):
        step = math.sqrt(step)
        candidates = [(best[1] * x, best[2] * y) for x in (1 / step, 1, step) for y in (1 / step, 1, step)]
        best = min([best, *((loss(a, b), a, b) for a, b in candidates if 0 < a <= 4 and 0 < b <= 4)])
    return base.model_copy(update={params[0]: round(best[1], 4), params[1]: round(best[2], 4), "source": source})


def fit_params(catalog: Catalog, points: list[Observation]) -> tuple[str, str]:
    """What one measured point (a TTFT and a decode rate) can pin down: on CPUs the efficiencies of the prefill
    kernel it ran (tiled or not) and of the decode kernels (matrix-vector work below the memory roof); elsewhere
    compute and memory."""
    first = points[0]
    if catalog.get_hardware(first.hardware).kind != "cpu":
        return FIT_DEFAULT
    prefill = "compute" if first.setup(catalog).prefill_kernel == "gemm" else "compute_untiled"
    return prefill, "compute_decode"


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
    "fit_params",
    "load_observations",
    "median_abs_error",
    "predict",
]
