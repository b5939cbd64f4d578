"""Statistics for eval runs: bootstrap intervals, paired comparisons (paired bootstrap, exact McNemar).

Everything is seeded (numpy's PCG64 via `default_rng(seed)`), so the same scores give the same interval.
Scores are per-item values in [0, 1] (a pass is 1.0); a variant's items and its baseline's are paired by
item id, so "B is worse" is a statement about the same questions, not about two samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
DEFAULT_RESAMPLES = 2000


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate with a two-sided percentile-bootstrap interval."""

    value: float
    low: float
    high: float
    level: float = 0.95

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "level": self.level}


def _array(values: Sequence[float]) -> FloatArray:
    return np.asarray(values, dtype=np.float64)


def bootstrap_mean(
    values: Sequence[float], *, seed: int = 0, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95
) -> Interval:
    """Mean of `values` with a percentile-bootstrap interval (resampling items with replacement)."""
    data = _array(values)
    if data.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), level)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(data.mean()), float(low), float(high), level)


@dataclass(frozen=True, slots=True)
class PairedResult:
    """candidate − baseline over the same items: mean difference with its bootstrap interval, the share of
    resamples where the candidate is not worse, and McNemar's exact test on pass/fail discordance."""

    n: int
    diff: Interval
    p_not_worse: float
    only_baseline: int  # items the baseline passed and the candidate failed
    only_candidate: int  # items the candidate passed and the baseline failed
    mcnemar_p: float

    @property
    def verdict(self) -> str:
        if self.diff.high < 0:
            return "worse"
        if self.diff.low > 0:
            return "better"
        return "no significant difference"

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "diff": self.diff.to_json(),
            "p_not_worse": self.p_not_worse,
            "only_baseline": self.only_baseline,
            "only_candidate": self.only_candidate,
            "mcnemar_p": self.mcnemar_p,
            "verdict": self.verdict,
        }


def paired_bootstrap(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = 0.95,
) -> tuple[Interval, float]:
    """Mean of (candidate − baseline) per item with a bootstrap interval that resamples items (pairs stay
    together), and the share of resamples where the difference is ≥ 0."""
    a, b = _array(baseline), _array(candidate)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    diff = b - a
    if diff.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), level), float("nan")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(diff.mean()), float(low), float(high), level), float((means >= 0).mean())


def mcnemar_exact(only_baseline: int, only_candidate: int) -> float:
    """Two-sided exact McNemar test: under H0 the discordant pairs split 50/50 (a binomial test)."""
    from scipy.stats import binomtest  # type: ignore[import-untyped]

    discordant = only_baseline + only_candidate
    if discordant == 0:
        return 1.0
    return float(binomtest(only_candidate, discordant, 0.5, alternative="two-sided").pvalue)


def compare(
    baseline: Sequence[float],
    candidate: Sequence[float],
    baseline_pass: Sequence[bool],
    candidate_pass: Sequence[bool],
    *,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
) -> PairedResult:
    diff, p_not_worse = paired_bootstrap(baseline, candidate, seed=seed, resamples=resamples)
    only_baseline = sum(1 for a, b in zip(baseline_pass, candidate_pass, strict=True) if a and not b)
    only_candidate = sum(1 for a, b in zip(baseline_pass, candidate_pass, strict=True) if b and not a)
    return PairedResult(
        len(baseline), diff, p_not_worse, only_baseline, only_candidate, mcnemar_exact(only_baseline, only_candidate)
    )
