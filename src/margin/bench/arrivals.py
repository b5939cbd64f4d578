"""Open-loop arrival schedules: Poisson at a rate, or gamma-distributed gaps for burstier traffic.

Gaps are Gamma(shape=burstiness, scale=1/(rate × burstiness)): the mean gap is always 1/rate; burstiness 1
is a Poisson process, below 1 is burstier (coefficient of variation 1/√burstiness), above 1 is smoother.
The same seed gives the same schedule."""

from __future__ import annotations

import math

import numpy as np

from margin.errors import InvalidRequest


def gaps(rate: float, count: int, *, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """`count` inter-arrival gaps in seconds (the first request leaves at time 0 + its gap)."""
    if rate <= 0:
        raise InvalidRequest("the request rate must be positive (use inf to send everything at once)")
    if burstiness <= 0:
        raise InvalidRequest("burstiness must be positive (1 = Poisson)")
    if math.isinf(rate):
        return [0.0] * count
    rng = np.random.default_rng(seed)
    drawn = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=count)
    return [float(g) for g in drawn]


def schedule(rate: float, count: int, *, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Send times (seconds from the run start) of `count` requests: the running sum of the gaps."""
    return [float(t) for t in np.cumsum(gaps(rate, count, burstiness=burstiness, seed=seed))]
