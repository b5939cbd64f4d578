"""Calibration from measurements: a `margin bench` result (schema margin.bench/1) or any observations become the
efficiency factors of one device, saved as a small YAML file that `margin plan --calibration FILE` applies.

From a bench result the run at concurrency 1 (else the first run) gives one point: mean prompt and output
tokens per completed request, TTFT p50 and TPOT p50 (vLLM definitions, bench/SCHEMA.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from margin.errors import ConfigError
from margin.plan.catalog import Catalog, EfficiencyClass, Provenance, Strict
from margin.plan.validate import Observation, fit, fit_params
from margin.userfiles import read_text, read_yaml, validation_message

SCHEMA = "margin.plan.calibration/1"


class CalibrationFile(Strict):
    schema_: str = Field(alias="schema")
    hardware: str
    efficiency: EfficiencyClass
    points: list[Observation]


class _Read(BaseModel):
    """The parts of a bench result (bench/SCHEMA.md) calibration reads; the rest of the file is ignored."""

    model_config = ConfigDict(extra="ignore")


class _Latency(_Read):
    p50: float = Field(gt=0, allow_inf_nan=False)


class _Metrics(_Read):
    completed: int = Field(0, ge=0)
    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)
    ttft_ms: _Latency | None = None
    tpot_ms: _Latency | None = None


class _Load(_Read):
    label: str | None = None
    concurrency: int | None = None


class _Run(_Read):
    load: _Load = _Load()
    metrics: _Metrics = _Metrics()


class _BenchResult(_Read):
    schema_: Literal["margin.bench/1"] = Field(alias="schema")
    created_at: str | None = None
    runs: list[_Run] = Field(min_length=1)


def _bench_run(data: Any, path: Path) -> tuple[_BenchResult, _Run]:
    """The run at concurrency 1 (else the first). Not such a result (a list, a number, fields of other types)
    is a ConfigError; it was an AttributeError traceback."""
    try:
        result = _BenchResult.model_validate(data)
    except ValidationError as exc:
        why = validation_message(exc, 2)
        raise ConfigError(f"{path}: not a margin bench result (schema margin.bench/1 with runs): {why}") from exc
    return result, next((r for r in result.runs if r.load.concurrency == 1), result.runs[0])


def observations_from_bench(
    path: Path,
    model: str,
    hardware: str,
    weights: str,
    *,
    kv: str = "fp16",
    engine: str = "llamacpp",
    threads: int | None = None,
) -> list[Observation]:
    try:
        data = json.loads(read_text(path, "bench result"))
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested past the parser's stack
        raise ConfigError(f"cannot read bench result {path}: {exc}") from exc
    result, run = _bench_run(data, path)
    metrics = run.metrics
    done = metrics.completed
    if done < 1 or metrics.ttft_ms is None or metrics.tpot_ms is None:
        raise ConfigError(f"{path}: the run has no completed requests with TTFT and TPOT")
    concurrency = run.load.concurrency
    source = Provenance(
        source=f"margin bench {path.name}, run {run.load.label}, p50 of {done} requests",
        as_of=(result.created_at or "")[:10] or time.strftime("%Y-%m-%d"),
        confidence="measured",
    )
    common: dict[str, Any] = {
        "group": "bench",
        "model": model,
        "hardware": hardware,
        "weights": weights,
        "kv": kv,
        "engine": engine,
        "threads": threads,
        "input_tokens": max(1, round(metrics.input_tokens / done)),
        "output_tokens": max(1, round(metrics.output_tokens / done)),
        "batch": concurrency if concurrency is not None else 1,
        "role": "calibrate",
        "source": source,
    }
    return [
        Observation(id=f"bench-{path.stem}-ttft", metric="ttft_ms", value=metrics.ttft_ms.p50, **common),
        Observation(id=f"bench-{path.stem}-tpot", metric="tpot_ms", value=metrics.tpot_ms.p50, **common),
    ]


def calibrate(catalog: Catalog, hardware: str, points: list[Observation]) -> EfficiencyClass:
    catalog.get_hardware(hardware)
    names = ", ".join(p.id for p in points)
    origins = "; ".join(dict.fromkeys(p.source.source for p in points))
    source = Provenance(
        source=f"margin plan calibrate on {names} ({origins})", as_of=time.strftime("%Y-%m-%d"), confidence="measured"
    )
    return fit(points, catalog, catalog.efficiency_for(hardware), source, fit_params(catalog, points))


def write_calibration(path: Path, hardware: str, eff: EfficiencyClass, points: list[Observation]) -> None:
    doc = {
        "schema": SCHEMA,
        "hardware": hardware,
        "efficiency": eff.model_dump(mode="json", exclude_none=True),
        "points": [p.model_dump(mode="json", exclude_none=True) for p in points],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def load_calibration(path: Path) -> dict[str, EfficiencyClass]:
    data = read_yaml(path, "calibration file")
    try:
        doc = CalibrationFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid calibration file {path}: {validation_message(exc)}") from exc
    if doc.schema_ != SCHEMA:
        raise ConfigError(f"{path}: expected schema {SCHEMA}, got {doc.schema_}")
    return {doc.hardware: doc.efficiency}
