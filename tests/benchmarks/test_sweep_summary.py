"""The gateway sweep's summary arithmetic (benchmarks/sweep_summary.py): no network, no processes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "sweep_summary.py"
    spec = importlib.util.spec_from_file_location("sweep_summary", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("sweep_summary", module)
    spec.loader.exec_module(module)
    return module


summary = _load()


def entry(rate: float, success: float, p50: float | None, p99: float | None) -> dict[str, object]:
    return {"offered_rps": rate, "success_pct": success, "p50_ms": p50, "p99_ms": p99}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert summary.percentile(values, 50) == 50.0
    assert summary.percentile(values, 99) == 99.0
    assert summary.percentile(values, 100) == 100.0
    assert summary.percentile([7.0], 99) == 7.0
    assert summary.percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert summary.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert summary.percentile([], 50) is None


def test_rate_entry_counts_errors_against_success_and_splits_kinds() -> None:
    result = summary.rate_entry(100, 2.0, {"json": [1.0, 2.0, 3.0], "stream": [10.0, 20.0]}, errors=5, late_starts=1)
    assert result["requests"] == 10
    assert result["success_pct"] == 50.0
    assert result["achieved_rps"] == 2.5  # 5 answered in 2 s
    assert result["p50_ms"] == 3.0
    assert result["p99_ms"] == 20.0
    assert result["json_p50_ms"] == 2.0
    assert result["stream_p99_ms"] == 20.0
    assert result["late_starts"] == 1


def test_rate_entry_with_nothing_answered() -> None:
    result = summary.rate_entry(2000, 20.0, {}, errors=40)
    assert result["success_pct"] == 0.0
    assert result["achieved_rps"] == 0.0
    assert result["p99_ms"] is None
    assert not summary.is_sustained(result)


def test_max_sustained_needs_both_success_and_p99() -> None:
    rates = [
        entry(100, 100.0, 1.0, 2.0),
        entry(250, 99.5, 1.0, 49.9),
        entry(500, 100.0, 3.0, 50.0),  # p99 not below 50 ms
        entry(1000, 98.9, 2.0, 10.0),  # too many failures
        {"offered_rps": 2000, "skipped": "collapsed at 1000 RPS"},
    ]
    assert summary.max_sustained_rps(rates) == 250
    assert summary.max_sustained_rps(rates, max_p99_ms=60.0) == 500
    assert summary.max_sustained_rps([entry(100, 40.0, 900.0, 5000.0)]) is None
    assert summary.max_sustained_rps([]) is None


def test_max_sustained_is_the_highest_passing_rate_in_any_order() -> None:
    rates = [entry(1000, 100.0, 1.0, 5.0), entry(100, 100.0, 1.0, 90.0), entry(500, 100.0, 1.0, 4.0)]
    assert summary.max_sustained_rps(rates) == 1000


def test_added_latency_is_per_rate_against_direct() -> None:
    direct = [entry(100, 100.0, 0.5, 1.0), entry(500, 100.0, 0.6, 2.0)]
    gateway = [entry(100, 100.0, 1.25, 2.5), entry(500, 100.0, 0.7, 1.5), entry(25, 100.0, 9.0, 9.0)]
    added = summary.added_latency(gateway, direct)
    assert added[0] == {"offered_rps": 100, "added_p50_ms": 0.75, "added_p99_ms": 1.5}
    assert added[1] == {"offered_rps": 500, "added_p50_ms": 0.1, "added_p99_ms": -0.5}
    assert added[2] == {"offered_rps": 25, "added_p50_ms": None, "added_p99_ms": None}


def test_collapse_and_ratio() -> None:
    assert summary.is_collapsed(entry(100, 49.9, 1.0, 1.0))
    assert not summary.is_collapsed(entry(100, 50.0, 1.0, 1.0))
    assert summary.ratio(1000, 40) == 25.0
    assert summary.ratio(1000, None) is None
    assert summary.ratio(None, 40) is None
    assert summary.ratio(1000, 0) is None


def test_max_served_ignores_latency_but_not_loss() -> None:
    rates = [
        {**entry(100, 100.0, 900.0, 5000.0), "achieved_rps": 100.0},  # slow but all answered
        {**entry(250, 99.5, 2.0, 9.0), "achieved_rps": 240.0},  # answered, but below 99 % of the offered rate
        {**entry(500, 95.0, 2.0, 9.0), "achieved_rps": 500.0},  # lost requests
        {"offered_rps": 1000, "skipped": "collapsed at 500 RPS"},
    ]
    assert summary.max_served_rps(rates) == 100
    assert summary.max_sustained_rps(rates) == 250  # the definition has no achieved-rate bound
    assert summary.max_served_rps(rates[1:]) is None


def test_margin_against_the_bare_proxy() -> None:
    def at(rate: float, p50: float, p99: float, cpu: float | None = None) -> dict[str, object]:
        found: dict[str, object] = {**entry(rate, 100.0, p50, p99)}
        if cpu is not None:
            found["gateway_cpu_us_per_request"] = cpu
        return found

    direct = [at(500, 1.0, 2.0), at(1000, 1.0, 3.0)]
    bare = [at(500, 1.5, 3.0, cpu=200.0), at(1000, 2.0, 60.0, cpu=190.0)]
    margin = [at(500, 1.6, 4.5, cpu=300.0), at(1000, 2.5, 40.0, cpu=280.0)]
    targets = summary.versus_bare(margin, bare, direct, 500.0)
    assert targets["added_p50_ms_over_bare"]["measured"] == 0.1 and targets["added_p50_ms_over_bare"]["met"]
    assert targets["added_p99_ms_over_bare"]["measured"] == 1.5 and not targets["added_p99_ms_over_bare"]["met"]
    sustained = targets["max_sustained_rps_margin_over_bare"]
    assert (sustained["margin"], sustained["bare"], sustained["measured"], sustained["met"]) == (1000, 500, 2.0, True)
    cpu = targets["gateway_cpu_per_request_margin_over_bare"]
    assert cpu["measured"] == 1.5 and cpu["met"] is False
    assert summary.versus_bare([], bare, direct)["added_p50_ms_over_bare"]["met"] is None
