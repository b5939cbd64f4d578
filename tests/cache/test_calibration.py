from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from margin.cache.calibration import (
    calibrate_threshold,
    empirical_threshold,
    load_calibration,
    max_false_hits,
    threshold_for,
)
from margin.errors import ConfigError, InvalidRequest


def synthetic(n: int, seed: int) -> tuple[list[float], list[bool]]:
    """Scored queries with known truth: 40 % correct, similarities N(0.9, 0.05) if correct else N(0.75, 0.08)."""
    rng = np.random.default_rng(seed)
    correct = rng.random(n) < 0.4
    sims = np.where(correct, rng.normal(0.9, 0.05, n), rng.normal(0.75, 0.08, n))
    return sims.tolist(), correct.tolist()


def false_hit_rate(sims: list[float], correct: list[bool], threshold: float) -> float:
    return sum(1 for s, ok in zip(sims, correct, strict=True) if s >= threshold and not ok) / len(sims)


def binom_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k + 1))


@pytest.mark.parametrize(("n", "delta"), [(50, 0.1), (200, 0.02), (400, 0.05), (1000, 0.01)])
def test_max_false_hits_is_the_binomial_quantile(n: int, delta: float) -> None:
    k = max_false_hits(n, delta, 0.05)
    if k >= 0:
        assert binom_cdf(k, n, delta) <= 0.05
    assert binom_cdf(k + 1, n, delta) > 0.05


@pytest.mark.parametrize("delta", [0.005, 0.01, 0.02, 0.05])
def test_threshold_meets_delta_on_fresh_data(delta: float) -> None:
    sims, correct = synthetic(5000, seed=1)
    threshold = calibrate_threshold(sims, correct, delta)
    fresh_sims, fresh_correct = synthetic(200_000, seed=2)
    assert false_hit_rate(fresh_sims, fresh_correct, threshold) <= delta
    # and it is not trivially conservative: some hits remain
    assert sum(s >= threshold for s in fresh_sims) > 0.05 * len(fresh_sims)


def test_violations_are_rare_over_many_calibration_draws() -> None:
    fresh_sims, fresh_correct = synthetic(100_000, seed=99)
    violations = 0
    for seed in range(40):
        sims, correct = synthetic(2000, seed=seed + 100)
        threshold = calibrate_threshold(sims, correct, 0.02)
        violations += false_hit_rate(fresh_sims, fresh_correct, threshold) > 0.02
    assert violations <= 6  # ≤ 5 % expected at 95 % confidence; 6/40 leaves room for noise


def test_threshold_is_monotone_in_delta() -> None:
    sims, correct = synthetic(5000, seed=3)
    thresholds = [calibrate_threshold(sims, correct, d) for d in (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.3)]
    assert thresholds == sorted(thresholds, reverse=True)
    assert thresholds[0] > thresholds[-1]


def test_higher_confidence_is_more_conservative() -> None:
    sims, correct = synthetic(5000, seed=4)
    assert calibrate_threshold(sims, correct, 0.01, confidence=0.99) >= calibrate_threshold(
        sims, correct, 0.01, confidence=0.5
    )


def test_small_sets_and_edges() -> None:
    assert calibrate_threshold([0.99] * 10, [True] * 10, 0.01) == math.inf  # 10 samples cannot certify 1 %
    assert calibrate_threshold([], [], 0.01) == math.inf
    assert calibrate_threshold([0.5, 0.9], [False, True], 1.0) == -1.0
    sims = [0.9] * 500 + [0.1] * 500
    assert calibrate_threshold(sims, [True] * 500 + [False] * 500, 0.01) == 0.9
    with pytest.raises(InvalidRequest):
        calibrate_threshold([0.1], [True, False], 0.1)
    with pytest.raises(InvalidRequest):
        calibrate_threshold([0.1], [True], 0.0)


def test_empirical_threshold_meets_delta_in_sample() -> None:
    sims, correct = synthetic(3000, seed=5)
    for delta in (0.005, 0.02):
        threshold = empirical_threshold(sims, correct, delta)
        assert false_hit_rate(sims, correct, threshold) <= delta
        assert calibrate_threshold(sims, correct, delta) >= threshold


def test_load_calibration_and_conservative_pick(tmp_path: Path) -> None:
    path = tmp_path / "cal.json"
    path.write_text('{"thresholds": {"0.01": 0.93, "0.05": 0.88}}')
    table = load_calibration(path)
    assert table == {0.01: 0.93, 0.05: 0.88}
    assert threshold_for(0.02, table) == 0.93
    assert threshold_for(0.05, table) == 0.88
    with pytest.raises(ConfigError):
        threshold_for(0.001, table)
    with pytest.raises(ConfigError):
        load_calibration(tmp_path / "missing.json")


def test_shipped_calibration_is_monotone() -> None:
    table = load_calibration()
    assert {0.005, 0.01, 0.02, 0.05} <= set(table)
    ordered = [table[d] for d in sorted(table)]
    assert ordered == sorted(ordered, reverse=True)
    assert all(0.5 < t <= 1.0 for t in ordered)
