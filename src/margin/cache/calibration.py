"""Error-bounded thresholds for the semantic cache.

A calibration set is one record per query: the cosine similarity of the entry the cache would serve (the
nearest one) and whether serving it is correct. A threshold `t` answers the query when similarity ≥ t, so
its false-hit rate is FHR(t) = #{served, wrong, similarity ≥ t} / #queries, which only falls as `t` rises.

`calibrate_threshold` returns the lowest threshold for which the hypothesis "FHR(t) > δ" is rejected by an
exact binomial test at level α = 1 − confidence, testing thresholds from the highest down and stopping at the
first that is not rejected (fixed-sequence testing, as in Learn-then-Test, Angelopoulos et al. 2021). Because
FHR is monotone, this is one count: reject when the number of false hits above `t` is ≤ k*, the largest k
with P[Binomial(n, δ) ≤ k] ≤ α. With probability ≥ confidence over the draw of an i.i.d. calibration set,
the returned threshold has true false-hit rate ≤ δ on queries from the same distribution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import orjson

from margin.errors import ConfigError, InvalidRequest

NEVER = math.inf
CALIBRATION_FILE = "calibration.json"


def max_false_hits(n: int, delta: float, alpha: float) -> int:
    """Largest k with P[Binomial(n, delta) ≤ k] ≤ alpha, or -1 when even k = 0 is too likely."""
    if n <= 0:
        return -1
    log_q, log_ratio = math.log1p(-delta), math.log(delta) - math.log1p(-delta)
    log_alpha = math.log(alpha)
    log_pmf = n * log_q
    log_cdf = log_pmf
    k = -1
    while log_cdf <= log_alpha and k < n:
        k += 1
        if k == n:
            break
        log_pmf += math.log(n - k) - math.log(k + 1) + log_ratio
        log_cdf = _logaddexp(log_cdf, log_pmf)
    return k


def _logaddexp(a: float, b: float) -> float:
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(low - high))


def calibrate_threshold(
    similarities: Sequence[float], duplicate: Sequence[bool], delta: float, *, confidence: float = 0.95
) -> float:
    """The lowest cosine threshold whose false-hit rate is ≤ `delta` at the given confidence (see module doc).

    `similarities[i]` is the similarity of the entry served for query i, `duplicate[i]` whether serving it is
    correct. Returns `math.inf` (never hit) when the set is too small to certify `delta`."""
    if len(similarities) != len(duplicate):
        raise InvalidRequest("similarities and duplicate must have the same length")
    if not 0.0 < delta <= 1.0:  # NaN is not
        raise InvalidRequest(f"delta must be in (0, 1], got {delta}")
    if not 0.0 < confidence < 1.0:
        raise InvalidRequest(f"confidence must be in (0, 1), got {confidence}")
    if not similarities:
        return NEVER
    if delta >= 1.0:
        return -1.0
    n = len(similarities)
    k_star = max_false_hits(n, delta, 1.0 - confidence)
    if k_star < 0:
        return NEVER
    wrong = sorted((s for s, ok in zip(similarities, duplicate, strict=True) if not ok), reverse=True)
    if k_star >= len(wrong):
        return -1.0
    barrier = wrong[k_star]  # the (k*+1)-th highest wrong score must stay below the threshold
    above = [s for s in similarities if s > barrier]
    return min(above) if above else NEVER


def empirical_threshold(similarities: Sequence[float], duplicate: Sequence[bool], delta: float) -> float:
    """The lowest threshold whose false-hit rate on this very set is ≤ delta (no confidence margin): the
    in-hindsight best on a test set, reported as an oracle reference."""
    n = len(similarities)
    wrong = sorted((s for s, ok in zip(similarities, duplicate, strict=True) if not ok), reverse=True)
    allowed = math.floor(delta * n + 1e-9)
    if allowed >= len(wrong):
        return -1.0
    barrier = wrong[allowed]
    above = [s for s in similarities if s > barrier]
    return min(above) if above else NEVER


def load_calibration(path: str | Path | None = None) -> dict[float, float]:
    """δ → threshold from a calibration file (by default the one shipped in this package, built by
    `margin eval cache --write-calibration`). Thresholds may be `inf` (never hit)."""
    try:
        if path is None:
            raw = resources.files("margin.cache").joinpath(CALIBRATION_FILE).read_bytes()
        else:
            raw = Path(path).read_bytes()
        data = orjson.loads(raw)
        table = data["thresholds"].items()
        return {float(d): math.inf if t is None else float(t) for d, t in table}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"cannot read semantic-cache calibration {path or CALIBRATION_FILE}: {exc}") from exc


def threshold_for(delta: float, calibration: Mapping[float, float]) -> float:
    """The threshold calibrated for the largest δ' ≤ δ (conservative when δ is not in the table)."""
    usable = [d for d in calibration if d <= delta + 1e-12]
    if not usable:
        raise ConfigError(f"no calibrated threshold for false-hit rate {delta}; smallest is {min(calibration)}")
    return calibration[max(usable)]
