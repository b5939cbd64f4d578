"""Workload files and length distributions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from margin.errors import ConfigError
from margin.plan.workload import Lengths, Workload, load_workload


def test_distributions_mean_and_quantiles() -> None:
    assert Lengths(mean=500).quantile(0.99) == 500
    uniform = Lengths(dist="uniform", min=100, max=300)
    assert uniform.average() == 200 and uniform.quantile(0.95) == pytest.approx(290)
    normal = Lengths(dist="normal", mean=300, std=100)
    assert normal.quantile(0.95) == pytest.approx(300 + 1.6449 * 100, rel=1e-4)
    lognormal = Lengths(dist="lognormal", mean=1000, sigma=0.5)
    assert lognormal.quantile(0.5) == pytest.approx(1000 * math.exp(-0.125))  # median = mean × e^(−σ²/2)
    empirical = Lengths(dist="empirical", values=[10, 100, 1000], weights=[1, 2, 1])
    assert empirical.average() == pytest.approx(302.5)
    assert empirical.quantile(0.5) == 100 and empirical.quantile(0.95) == 1000


def test_incomplete_distributions_are_refused() -> None:
    with pytest.raises(ValueError, match="sigma"):
        Lengths(dist="lognormal", mean=100)
    with pytest.raises(ValueError, match="weights"):
        Lengths(dist="empirical", values=[1, 2], weights=[1])


def test_a_parameter_its_distribution_does_not_take_is_refused() -> None:
    with pytest.raises(ValueError, match="fixed lengths take mean, not std"):  # no `dist`: was a fixed 1000
        Lengths.model_validate({"mean": 1000, "std": 300})
    with pytest.raises(ValueError, match="not sigma"):
        Lengths(dist="normal", mean=1000, std=100, sigma=0.5)
    with pytest.raises(ValueError, match="not mean"):
        Lengths(dist="uniform", min=1, max=10, mean=5)
    assert Lengths(dist="empirical", values=[1, 2], weights=[1, 3]).average() == pytest.approx(1.75)


def test_workload_tails(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(
        "model: llama-3.1-8b\nrate_rps: 4\ninput_tokens: {dist: uniform, min: 100, max: 1100}\n"
        "output_tokens: 200\nslo: {ttft_ms: 500, tpot_ms: 40}\n"
    )
    w = load_workload(path)
    assert (w.mean_input(), w.mean_output(), w.tail_input(), w.tail_context()) == (600, 200, 1050, 1090 + 200)
    slo = w.slo.slo()
    assert (slo.ttft_s, slo.tpot_s, slo.e2e_s) == (0.5, 0.04, None)


def test_unknown_workload_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("model: m\nrate_rps: 1\ninput_tokens: 10\noutput_tokens: 10\nsl0: {}\n")
    with pytest.raises(ConfigError, match="sl0"):
        load_workload(path)
    with pytest.raises(ValueError):
        Workload(model="m", rate_rps=0, input_tokens=1, output_tokens=1)


def test_empirical_weights_near_the_float_limit_keep_their_shares() -> None:
    """Weights are relative: [1e308, 1e308] is [1, 1] (their sum overflowed to inf, every share was 0, so
    the mean prompt was 0 tokens and the plan sized for 1)."""
    huge = Lengths(dist="empirical", values=[100, 300], weights=[1e308, 1e308])
    assert huge.average() == pytest.approx(200) and huge.quantile(0.99) == 300
