"""Bootstrap intervals, the paired bootstrap and McNemar's exact test on cases with known answers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import numpy as np
import pytest

from margin.evals.stats import bootstrap_mean, compare, mcnemar_exact, paired_bootstrap


def test_bootstrap_of_a_constant_is_that_constant() -> None:
    interval = bootstrap_mean([0.5] * 40, seed=3)
    assert (interval.value, interval.low, interval.high) == (0.5, 0.5, 0.5)


def test_bootstrap_interval_of_a_proportion_matches_the_normal_approximation() -> None:
    values = [1.0] * 60 + [0.0] * 40  # p = 0.6, n = 100: normal 95% interval 0.6 ± 1.96·0.049 = [0.504, 0.696]
    interval = bootstrap_mean(values, seed=0, resamples=4000)
    assert interval.value == pytest.approx(0.6)
    assert interval.low == pytest.approx(0.504, abs=0.02) and interval.high == pytest.approx(0.696, abs=0.02)


def test_bootstrap_is_deterministic_for_a_seed_and_changes_with_it() -> None:
    values = list(np.random.default_rng(1).random(50))
    assert bootstrap_mean(values, seed=5) == bootstrap_mean(values, seed=5)
    assert bootstrap_mean(values, seed=5).low != bootstrap_mean(values, seed=6).low


def test_bootstrap_of_nothing_is_nan() -> None:
    assert math.isnan(bootstrap_mean([]).value)


def test_paired_bootstrap_sees_a_consistent_small_drop_that_unpaired_intervals_miss() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(200)  # items differ a lot in difficulty…
    cand = base - 0.02  # …but the candidate is always 0.02 worse on the same item
    # cast: paired_bootstrap works on any float sequence; an ndarray is not a typing.Sequence
    diff, p_not_worse = paired_bootstrap(cast(Sequence[float], base), cast(Sequence[float], cand), seed=0)
    assert diff.value == pytest.approx(-0.02) and diff.high < 0 and p_not_worse == 0.0
    a, b = bootstrap_mean(list(base)), bootstrap_mean(list(cand))
    assert a.low < b.high  # the unpaired intervals overlap


def test_paired_bootstrap_rejects_unpaired_lengths() -> None:
    with pytest.raises(ValueError):
        paired_bootstrap([1.0, 0.0], [1.0])


def test_mcnemar_exact_known_values() -> None:
    # 1 vs 9 discordant pairs: two-sided binomial P = 2 · (C(10,0) + C(10,1)) / 2^10 = 22/1024
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar_exact(5, 5) == pytest.approx(1.0)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)


def test_compare_counts_discordant_pairs_and_gives_a_verdict() -> None:
    base = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0] * 3
    cand = [1, 1, 1, 0, 0, 0, 0, 0, 0, 1] * 3
    result = compare(base, cand, [b == 1 for b in base], [c == 1 for c in cand], seed=0)
    assert (result.n, result.only_baseline, result.only_candidate) == (30, 15, 3)
    assert result.mcnemar_p == pytest.approx(mcnemar_exact(15, 3)) and result.mcnemar_p < 0.01
    assert result.diff.value == pytest.approx(-0.4) and result.verdict == "worse"
    same = compare(base, base, [b == 1 for b in base], [b == 1 for b in base])
    assert same.verdict == "no significant difference" and same.mcnemar_p == 1.0
