from __future__ import annotations

import numpy as np
import pytest

from margin.errors import InvalidRequest
from margin.routing.metrics import pgr_curve, summary

# weak accuracy 0.5, strong 0.75; gain (strong − weak) per prompt: +1, +1, 0, −1
WEAK = [False, False, True, True]
STRONG = [True, True, True, False]


def test_best_order_by_hand() -> None:
    curve = pgr_curve([4, 3, 2, 1], WEAK, STRONG)
    assert curve.weak_accuracy == 0.5 and curve.strong_accuracy == 0.75
    assert curve.share.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    # accuracy 0.5, 0.75, 1.0, 1.0, 0.75 → PGR = (acc − 0.5) / 0.25
    assert np.allclose(curve.pgr, [0.0, 1.0, 2.0, 2.0, 1.0])
    assert curve.cpt(0.5) == 0.25 and curve.cpt(0.8) == 0.25
    assert curve.apgr() == pytest.approx(0.25 * (0.5 + 1.5 + 2.0 + 1.5))


def test_worst_order_by_hand() -> None:
    curve = pgr_curve([1, 2, 3, 4], WEAK, STRONG)
    assert np.allclose(curve.pgr, [0.0, -1.0, -1.0, 0.0, 1.0])
    assert curve.cpt(0.5) == 1.0
    assert curve.apgr() == pytest.approx(-0.375)


def test_constant_score_is_the_random_router() -> None:
    curve = pgr_curve([7, 7, 7, 7], WEAK, STRONG)
    assert np.allclose(curve.pgr, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert summary(curve) == {"cpt50": 0.5, "cpt80": 1.0, "apgr": 0.5}


def test_tie_group_counts_its_mean_gain() -> None:
    # prompts 2 and 3 tie (gains +1 and 0): taking one of them gains 0.5 in expectation
    curve = pgr_curve([2, 1, 1, 0], [False, False, True, True], [True, True, True, False])
    assert np.allclose(curve.pgr, [0.0, 1.0, 1.5, 2.0, 1.0])


def test_sampled_curve_interpolates() -> None:
    share, pgr = pgr_curve([4, 3, 2, 1], WEAK, STRONG).sampled(9)
    assert share[1] == 0.125 and pgr[1] == pytest.approx(0.5)
    assert len(share) == len(pgr) == 9


def test_undefined_inputs_are_rejected() -> None:
    with pytest.raises(InvalidRequest):
        pgr_curve([1, 2], [True, False], [True, False])
    with pytest.raises(InvalidRequest):
        pgr_curve([1.0], [True, False], [True, True])
    with pytest.raises(InvalidRequest):
        pgr_curve([float("nan"), 1.0], [False, False], [True, True])
