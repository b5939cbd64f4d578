"""The plan validation benchmark's bookkeeping (benchmarks/plan_validation.py) on synthetic measurements: the
calibration point, the measures, the medians. No model is loaded."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from margin.plan.catalog import Catalog
from margin.plan.perf import Setup, serve


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "plan_validation.py"
    spec = importlib.util.spec_from_file_location("plan_validation", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("plan_validation", module)
    spec.loader.exec_module(module)
    return module


bench = _load()


def _rows(catalog: Catalog, untiled: float, decode: float) -> list[dict[str, object]]:
    """Rows as `measure` writes them, made by the planner itself with known efficiencies (wall = CPU time here,
    except that wall-clock decode is 20 % slower, as on a busy machine)."""
    eff = catalog.efficiency_for(bench.HARDWARE).model_copy(
        update={"compute_untiled": untiled, "compute_decode": decode}
    )
    rows = []
    for weights, threads, prompt, output in bench.CONFIGS:
        setup = Setup(catalog, bench.MODEL, bench.HARDWARE, weights, "fp16", 1, "llamacpp", threads, eff)
        point = serve(setup, prompt, output, 1)
        run = {
            "ttft_ms": point.ttft_s * 1000,
            "decode_tok_s": 0.8 / point.tpot_s,
            "ttft_cpu_ms": point.ttft_s * 1000,
            "decode_cpu_tok_s": 1 / point.tpot_s,
        }
        rows.append(
            {
                "weights": weights,
                "threads": threads,
                "input_tokens": prompt,
                "output_tokens": output,
                "runs": [run, run],
                "load_avg": 1.0,
            }
        )
    return rows


def test_the_import_leaves_the_environment_alone() -> None:
    assert "GOMP_SPINCOUNT" not in os.environ or os.environ["GOMP_SPINCOUNT"] != "0"


def test_one_calibration_point_and_every_other_point_predicted() -> None:
    catalog = Catalog.bundled()
    rows = _rows(catalog, 0.31, 0.15)
    points = bench.observations(rows, "cpu-median")
    calibrating = [p for p in points if p.role == "calibrate"]
    assert len(calibrating) == 2 and {p.metric for p in calibrating} == {"ttft_ms", "decode_tok_s"}
    assert len(points) == 2 * len(bench.CONFIGS)
    cpu = bench.predict_cpu(rows, catalog, "cpu-median")
    assert cpu["efficiency"].compute_untiled == pytest.approx(0.31, rel=0.01)
    assert cpu["efficiency"].compute_decode == pytest.approx(0.15, rel=0.01)
    assert cpu["median"] < 1
    wall = bench.predict_cpu(rows, catalog, "wall-median")  # a uniform 20 % slowdown is absorbed by calibration
    assert wall["median"] < 1
    result = bench.summarize(rows, {"probe": "skipped"}, {}, "cpu-median")
    assert result["median_abs_error_pct"]["cpu"] < 1
    assert result["median_abs_error_pct"]["gpu_published"] <= 15
    assert {p["group"] for p in result["points"]} == {"cpu", "gpu_published", "soc_published"}
    assert all({"predicted", "measured", "error_pct", "source"} <= set(p) for p in result["points"])
