"""Open-loop schedules: seeded, the right mean rate, Poisson (CV 1) or gamma burstiness (CV 1/√shape)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from margin.bench.arrivals import gaps, schedule
from margin.errors import InvalidRequest


def test_poisson_gaps_have_mean_one_over_rate_and_cv_one() -> None:
    drawn = np.asarray(gaps(4.0, 20_000, seed=1))
    assert drawn.mean() == pytest.approx(0.25, rel=0.03)
    assert drawn.std() / drawn.mean() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("shape", [0.25, 4.0])
def test_gamma_burstiness_keeps_rate_and_sets_cv(shape: float) -> None:
    drawn = np.asarray(gaps(10.0, 20_000, burstiness=shape, seed=2))
    assert drawn.mean() == pytest.approx(0.1, rel=0.04)
    assert drawn.std() / drawn.mean() == pytest.approx(1 / math.sqrt(shape), rel=0.06)


def test_same_seed_same_schedule_and_times_increase() -> None:
    a, b = schedule(2.0, 50, seed=7), schedule(2.0, 50, seed=7)
    assert a == b
    assert schedule(2.0, 50, seed=8) != a
    assert all(y >= x for x, y in itertools.pairwise(a))


def test_infinite_rate_sends_all_at_once_and_bad_rates_fail() -> None:
    assert schedule(math.inf, 5) == [0.0] * 5
    with pytest.raises(InvalidRequest):
        gaps(0.0, 3)
    with pytest.raises(InvalidRequest):
        gaps(1.0, 3, burstiness=0)
