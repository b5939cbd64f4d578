"""Calibration from a `margin bench` result, written to a file the planner reads back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest

from margin.errors import ConfigError
from margin.plan.calibrate import calibrate, load_calibration, observations_from_bench, write_calibration
from margin.plan.catalog import Catalog
from margin.plan.perf import Setup, serve


def _bench_file(tmp_path: Path, ttft_ms: float, tpot_ms: float) -> Path:
    """The parts of a margin.bench/1 result the calibration reads (bench/SCHEMA.md)."""
    run = {
        "load": {"label": "concurrency=1", "concurrency": 1},
        "metrics": {
            "completed": 8,
            "input_tokens": 8 * 96,
            "output_tokens": 8 * 32,
            "ttft_ms": {"p50": ttft_ms},
            "tpot_ms": {"p50": tpot_ms},
        },
    }
    other = {"load": {"label": "concurrency=4", "concurrency": 4}, "metrics": {}}
    path = tmp_path / "bench.json"
    path.write_text(
        json.dumps({"schema": "margin.bench/1", "created_at": "2026-12-01T10:00:00Z", "runs": [other, run]})
    )
    return path


def test_calibrating_on_a_bench_result_reproduces_it(catalog: Catalog, tmp_path: Path) -> None:
    truth = catalog.efficiency_for("cpu-this-machine").model_copy(
        update={"compute_untiled": 0.3, "compute_decode": 0.12}
    )
    made = serve(
        Setup(catalog, "smollm2-135m", "cpu-this-machine", "gguf-q4_1", "fp16", 1, "llamacpp", 2, truth), 96, 32, 1
    )
    path = _bench_file(tmp_path, made.ttft_s * 1000, made.tpot_s * 1000)
    points = observations_from_bench(path, "smollm2-135m", "cpu-this-machine", "gguf-q4_1", threads=2)
    assert [(p.metric, p.input_tokens, p.output_tokens, p.batch) for p in points] == [
        ("ttft_ms", 96, 32, 1),
        ("tpot_ms", 96, 32, 1),
    ]
    eff = calibrate(catalog, "cpu-this-machine", points)
    # cast(object, ...): mypy takes the tuples of float and Approx for non-overlapping
    assert (eff.compute_untiled, eff.compute_decode) == (
        cast(object, pytest.approx(0.3, rel=0.01)),
        cast(object, pytest.approx(0.12, rel=0.01)),
    )
    out = tmp_path / "cal.yaml"
    write_calibration(out, "cpu-this-machine", eff, points)
    loaded = load_calibration(out)
    assert loaded["cpu-this-machine"].compute_decode == eff.compute_decode
    assert "bench.json" in loaded["cpu-this-machine"].source.source


def test_not_a_bench_result(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"schema": "other", "runs": []}))
    with pytest.raises(ConfigError, match="margin bench"):
        observations_from_bench(path, "smollm2-135m", "cpu-this-machine", "gguf-q4_1")
    bad = tmp_path / "cal.yaml"
    bad.write_text("schema: margin.plan.calibration/1\nhardware: x\n")
    with pytest.raises(ConfigError, match="calibration"):
        load_calibration(bad)


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "NaN",
        '{"schema": "margin.bench/1", "runs": [5]}',
        '{"schema": "margin.bench/1", "runs": [{"load": 5, "metrics": {}}]}',
        '{"schema": "margin.bench/1", "runs": [{"metrics": {"completed": 2, "ttft_ms": {"p50": -1}}}]}',
        "[" * 100_000 + "]" * 100_000,
    ],
)
def test_a_file_that_is_not_a_bench_result_is_a_config_error(tmp_path: Path, text: str) -> None:
    """A list, a number, runs or fields of other types, a negative latency, arrays nested past the parser's
    stack: a ConfigError naming the file (AttributeError and RecursionError tracebacks before)."""
    path = tmp_path / "b.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="bench result"):
        observations_from_bench(path, "smollm2-135m", "cpu-this-machine", "gguf-q4_1")
