"""RouteLLM routing metrics (DESIGN §8) for one strong and one weak model with per-prompt correctness labels.

A router gives each prompt a score (higher = more in need of the strong model). Sweeping the threshold sends
the k highest-scoring prompts to the strong model, k = 0…N. For each k:
  strong share = k / N,   score(k) = accuracy of that mix,   PGR(k) = (score(k) − weak) / (strong − weak)
where weak/strong are the all-weak/all-strong accuracies. Tied scores are ranked in random order and the curve
is its exact expectation (a tie group that straddles the cut contributes its mean gain pro rata), so a
constant score is the random router: PGR = share exactly.
CPT(x) = the smallest strong share whose PGR ≥ x (1.0 if never reached).
APGR = the area under PGR over strong share ∈ [0, 1] (trapezoids over all N + 1 points); random = 0.5.
PGR is not clipped: an oracle exceeds 1 because it also fixes prompts the strong model gets wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from margin.errors import InvalidRequest

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PgrCurve:
    """PGR at strong shares 0, 1/N, …, 1 (both arrays have N + 1 entries)."""

    share: FloatArray
    pgr: FloatArray
    weak_accuracy: float
    strong_accuracy: float

    def cpt(self, target: float) -> float:
        """Call-performance threshold: the strong share needed to reach PGR ≥ target."""
        reached = np.nonzero(self.pgr >= target - 1e-12)[0]
        return float(self.share[reached[0]]) if reached.size else 1.0

    def apgr(self) -> float:
        widths = np.diff(self.share)
        return float(np.sum(widths * (self.pgr[1:] + self.pgr[:-1]) / 2.0))

    def sampled(self, points: int = 101) -> tuple[list[float], list[float]]:
        """The curve at `points` evenly spaced strong shares (linear between the exact points), for plots."""
        grid = np.linspace(0.0, 1.0, points)
        return [round(float(x), 4) for x in grid], [round(float(y), 5) for y in np.interp(grid, self.share, self.pgr)]


def pgr_curve(scores: Sequence[float] | FloatArray, weak_ok: Sequence[bool], strong_ok: Sequence[bool]) -> PgrCurve:
    """The expected PGR curve of routing the highest `scores` to the strong model first."""
    s = np.asarray(scores, dtype=np.float64)
    weak = np.asarray(weak_ok, dtype=np.float64)
    strong = np.asarray(strong_ok, dtype=np.float64)
    n = s.size
    if n == 0 or weak.size != n or strong.size != n:
        raise InvalidRequest("scores and labels must be non-empty and of equal length")
    if not np.all(np.isfinite(s)):
        raise InvalidRequest("router scores must be finite")
    weak_acc, strong_acc = float(weak.mean()), float(strong.mean())
    if strong_acc == weak_acc:
        raise InvalidRequest("PGR is undefined when both models have the same accuracy")
    order = np.argsort(-s, kind="stable")
    sorted_scores, gains = s[order], (strong - weak)[order]
    # Expected cumulative gain with ties in random order: linear inside each tie group.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], n]
    group_gain = np.add.reduceat(gains, starts)
    bounds = np.r_[0, ends].astype(np.float64)
    cumulative = np.r_[0.0, np.cumsum(group_gain)]
    expected_gain = np.interp(np.arange(n + 1, dtype=np.float64), bounds, cumulative)
    accuracy = weak_acc + expected_gain / n
    pgr = (accuracy - weak_acc) / (strong_acc - weak_acc)
    return PgrCurve(np.arange(n + 1, dtype=np.float64) / n, pgr, weak_acc, strong_acc)


def summary(curve: PgrCurve) -> dict[str, float]:
    return {
        "cpt50": round(curve.cpt(0.5), 5),
        "cpt80": round(curve.cpt(0.8), 5),
        "apgr": round(curve.apgr(), 5),
    }
