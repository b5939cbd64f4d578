"""`margin eval gate`'s quality rule: a negative --max-quality-drop is a gain the candidate must show."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from margin.cli import app
from margin.errors import InvalidRequest
from margin.evals.gate import evaluate


def _run(value: float, low: float, high: float) -> dict[str, Any]:
    variants = [{"variant": name} for name in ("base", "new")]
    diff = {"value": value, "low": low, "high": high}
    return {
        "variants": variants,
        "comparisons": {"new": {"baseline": "base", "diff": diff, "n": 100, "mcnemar_p": 0.01}},
    }


@pytest.mark.parametrize(
    ("diff", "limit", "passed"),
    [
        ((0.03, 0.015, 0.045), -1.0, True),  # +3 pp [+1.5, +4.5]: at least 1 point better, shown
        ((0.03, 0.005, 0.055), -1.0, False),  # +3 pp but the interval reaches +0.5: a 1-point gain is not shown
        ((0.005, 0.001, 0.009), -1.0, False),  # better, but by less than the point asked for
        ((-0.005, -0.009, -0.001), 1.0, True),  # the usual rule: lost 0.5 pp, at most 0.9
        ((0.0, 0.0, 0.0), 0.0, True),  # 0: no drop allowed, none seen
    ],
)
def test_a_negative_limit_is_the_gain_required(diff: tuple[float, float, float], limit: float, passed: bool) -> None:
    (rule,) = evaluate(_run(*diff), "base", max_quality_drop=limit)
    assert rule.passed is passed, rule
    assert rule.rule.startswith("quality gain ≥ 1 pp" if limit < 0 else f"quality drop ≤ {limit:g} pp"), rule.rule


@pytest.mark.parametrize("limit", [float("nan"), float("inf"), float("-inf"), 100.5, -101.0])
def test_a_limit_that_is_no_number_of_points_is_refused(limit: float) -> None:
    with pytest.raises(InvalidRequest, match="percentage points from -100 to 100"):
        evaluate(_run(0.0, 0.0, 0.0), "base", max_quality_drop=limit)


def test_the_help_says_what_a_negative_limit_means() -> None:
    text = " ".join(CliRunner().invoke(app, ["eval", "gate", "--help"]).output.replace("│", " ").split())
    assert "negative: the gain it must show (-1: at least 1 point better" in text, text


@pytest.mark.parametrize("failed", ["base", "new"])
def test_quality_is_not_measured_where_every_request_of_a_side_failed(failed: str) -> None:
    """Both sides' items all 0 (the target was down): Δ 0 pp [0, 0] passed a no-drop rule before."""
    run = _run(0.0, 0.0, 0.0)
    for variant in run["variants"]:
        variant.update(n=2, errors=2 if variant["variant"] == failed else 0)
    (rule,) = evaluate(run, "base", max_quality_drop=1.0)
    assert not rule.passed and rule.measured == f"not measured: every request of {failed} failed", rule
    run["variants"][["base", "new"].index(failed)]["errors"] = 1  # some failed: the comparison stands
    assert evaluate(run, "base", max_quality_drop=1.0)[0].passed
