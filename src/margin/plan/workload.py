"""A workload to place: request rate, prompt and output length distributions, SLOs, constraints, search space.

```yaml
model: llama-3.1-8b
rate_rps: 20
input_tokens: {dist: lognormal, mean: 1000, sigma: 0.6}    # or a number, {dist: uniform, min, max},
output_tokens: {dist: normal, mean: 300, std: 80}           # {dist: normal, mean, std}, {values: [...], weights: [...]}
slo: {ttft_ms: 2000, tpot_ms: 60}
constraints: {jurisdictions: [EU], max_gco2e_per_1k_tokens: 2.0, max_usd_per_month: 40000}
search: {weights: [bf16, fp8, int4], kv: [fp16, fp8], devices: [1, 2, 4, 8], engine: vllm}
```
Throughput is planned at the mean lengths; the TTFT SLO is checked at the p95 prompt; the p99 prompt + p99
output must fit in one sequence's context."""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from statistics import NormalDist
from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag, ValidationError, model_validator

from margin.errors import ConfigError
from margin.plan.catalog import Strict
from margin.plan.perf import MAX_DEVICES, MAX_RATE_RPS, MAX_TOKENS, Slo
from margin.specs import MAX_OVERHEAD
from margin.userfiles import read_yaml, validation_message

Tokens = Annotated[int, Field(gt=0, le=MAX_TOKENS)]
MAX_SIGMA = 10.0  # a lognormal's sigma: e^10 ≈ 22,000 × the median is already no workload
MAX_VALUES = 100_000  # an empirical distribution's values


class Lengths(Strict):
    """A token-length distribution; `mean` and `quantile` in closed form (empirical: weighted)."""

    dist: Literal["fixed", "uniform", "normal", "lognormal", "empirical"] = "fixed"
    mean: float | None = Field(None, gt=0, le=MAX_TOKENS)
    min: Tokens | None = None
    max: Tokens | None = None
    std: float | None = Field(None, ge=0, le=MAX_TOKENS)
    sigma: float | None = Field(None, ge=0, le=MAX_SIGMA)
    values: list[Tokens] | None = Field(None, max_length=MAX_VALUES)
    weights: list[Annotated[float, Field(ge=0)]] | None = Field(None, max_length=MAX_VALUES)

    @model_validator(mode="after")
    def _complete(self) -> Lengths:
        needs = {
            "fixed": ("mean",),
            "uniform": ("min", "max"),
            "normal": ("mean", "std"),
            "lognormal": ("mean", "sigma"),
            "empirical": ("values",),
        }[self.dist]
        missing = [k for k in needs if getattr(self, k) is None]
        if missing:
            raise ValueError(f"{self.dist} lengths need {', '.join(missing)}")
        takes = {*needs, *(("weights",) if self.dist == "empirical" else ())}
        ignored = [k for k in ("mean", "min", "max", "std", "sigma", "values", "weights") if k not in takes]
        ignored = [k for k in ignored if getattr(self, k) is not None]
        if ignored:  # {mean: 1000, std: 300} without `dist` was a fixed 1000, its std silently dropped
            raise ValueError(f"{self.dist} lengths take {', '.join(needs)}, not {', '.join(ignored)} (set `dist`)")
        if self.values is not None and not self.values:
            raise ValueError("values must list at least one token count")
        if self.weights is not None and (self.values is None or len(self.weights) != len(self.values)):
            raise ValueError("weights must match values")
        if self.weights is not None and not sum(self.weights) > 0:
            raise ValueError("weights must not all be 0")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not exceed max")
        return self

    def average(self) -> float:
        if self.dist == "uniform":
            assert self.min is not None and self.max is not None
            return (self.min + self.max) / 2
        if self.dist == "empirical":
            values, weights = self._empirical()
            return sum(v * w for v, w in zip(values, weights, strict=True))
        assert self.mean is not None
        return self.mean

    def quantile(self, q: float) -> float:
        z = NormalDist().inv_cdf(q)
        if self.dist == "fixed":
            return self.average()
        if self.dist == "uniform":
            assert self.min is not None and self.max is not None
            return self.min + q * (self.max - self.min)
        if self.dist == "normal":
            assert self.mean is not None and self.std is not None
            return max(1.0, self.mean + z * self.std)
        if self.dist == "lognormal":
            assert self.mean is not None and self.sigma is not None
            mu = math.log(self.mean) - self.sigma**2 / 2
            return math.exp(mu + z * self.sigma)
        values, weights = self._empirical()
        seen = 0.0
        for value, weight in sorted(zip(values, weights, strict=True)):
            seen += weight
            if seen >= q - 1e-12:
                return float(value)
        return float(max(values))

    def _empirical(self) -> tuple[list[int], list[float]]:
        assert self.values is not None
        weights = self.weights or [1.0] * len(self.values)
        top = max(weights)  # scaled to the largest first: [1e308, 1e308] summed to inf, so every share was 0
        total = sum(w / top for w in weights)
        return self.values, [w / top / total for w in weights]


def lengths(value: int | Lengths) -> Lengths:
    return Lengths(mean=value) if isinstance(value, int) else value


def _length_kind(value: object) -> str:
    return "distribution" if isinstance(value, dict | Lengths) else "tokens"


# A number or a distribution; an error names only the one that was given (not "not an integer" for a mapping)
TokensOrLengths = Annotated[
    Annotated[Tokens, Tag("tokens")] | Annotated[Lengths, Tag("distribution")], Discriminator(_length_kind)
]


class SloSpec(Strict):
    ttft_ms: float | None = Field(None, gt=0)
    tpot_ms: float | None = Field(None, gt=0)
    e2e_ms: float | None = Field(None, gt=0)

    def slo(self) -> Slo:
        def s(ms: float | None) -> float | None:
            return None if ms is None else ms / 1000

        return Slo(s(self.ttft_ms), s(self.tpot_ms), s(self.e2e_ms))


class Constraints(Strict):
    jurisdictions: list[str] | None = Field(None, description="Allowed jurisdictions (EU, US, …); None = any")
    regions: list[str] | None = None
    hardware: list[str] | None = None
    max_gco2e_per_1k_tokens: float | None = Field(None, gt=0)
    max_usd_per_month: Decimal | None = Field(None, gt=0)
    include_owned: bool = True


class Search(Strict):
    weights: list[str] = Field(["bf16", "fp8", "int4"], min_length=1, max_length=64)
    kv: list[str] = Field(["fp16", "fp8"], min_length=1, max_length=64)
    devices: list[Annotated[int, Field(ge=1, le=MAX_DEVICES)]] = Field([1, 2, 4, 8], min_length=1, max_length=64)
    engine: str = "vllm"
    cpu_engine: str = "llamacpp"


class Workload(Strict):
    model: str
    rate_rps: float = Field(gt=0, le=MAX_RATE_RPS)
    input_tokens: TokensOrLengths
    output_tokens: TokensOrLengths
    slo: SloSpec = SloSpec()
    constraints: Constraints = Constraints()
    search: Search = Search()
    energy_overhead: Decimal = Field(
        Decimal(0), ge=0, le=MAX_OVERHEAD, description="DESIGN §4 overheads on the hourly price"
    )
    network_overhead: Decimal = Field(Decimal(0), ge=0, le=MAX_OVERHEAD)

    @property
    def inputs(self) -> Lengths:
        return lengths(self.input_tokens)

    @property
    def outputs(self) -> Lengths:
        return lengths(self.output_tokens)

    def mean_input(self) -> int:
        return max(1, round(self.inputs.average()))

    def mean_output(self) -> int:
        return max(1, round(self.outputs.average()))

    def tail_input(self) -> int:
        return max(1, math.ceil(self.inputs.quantile(0.95)))

    def tail_context(self) -> int:
        return math.ceil(self.inputs.quantile(0.99)) + math.ceil(self.outputs.quantile(0.99))


def load_workload(path: Path) -> Workload:
    data = read_yaml(path, "workload")
    try:
        return Workload.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid workload {path}: {validation_message(exc)}") from exc
