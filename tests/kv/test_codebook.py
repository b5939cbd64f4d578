from __future__ import annotations

import math

import numpy as np
import pytest

from margin.kv.codebook import (
    PUBLISHED_GAUSSIAN_CENTROIDS,
    _moments,
    beta_density,
    compute_codebook,
    distortion,
    unit_gaussian_centroids,
)


def _phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_gaussian_centroids_match_published(bits: int) -> None:
    ours = unit_gaussian_centroids(bits)
    assert np.max(np.abs(ours - np.array(PUBLISHED_GAUSSIAN_CENTROIDS[bits]))) < 1.5e-4


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_gaussian_codebook_meets_both_optimality_conditions_in_closed_form(bits: int) -> None:
    book = compute_codebook(bits, 1, "gaussian")
    c, t = book.centroids, book.boundaries
    np.testing.assert_allclose(t, 0.5 * (c[1:] + c[:-1]), atol=1e-12)
    edges = [-math.inf, *t.tolist(), math.inf]
    for i, centroid in enumerate(c):
        a, b = edges[i], edges[i + 1]
        mean = (_phi(a) - _phi(b)) / (_cdf(b) - _cdf(a))  # E[X | a < X < b] for X ~ N(0, 1)
        assert centroid == pytest.approx(mean, abs=2e-6)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_beta_codebook_centroids_are_conditional_means(bits: int) -> None:
    dim = 64
    book = compute_codebook(bits, dim, "beta")
    k = (dim - 3) / 2
    # ∫ x (1 − x²)^k dx = −(1 − x²)^(k+1) / (2(k+1)) exactly; the mass by an independent fine quadrature.
    grid = np.linspace(-1, 1, 2_000_001)
    dens = np.power(1 - grid**2, k)
    edges = np.concatenate([[-1.0], book.boundaries, [1.0]])
    for i, centroid in enumerate(book.centroids):
        a, b = edges[i], edges[i + 1]
        inside = (grid >= a) & (grid <= b)
        mass = np.trapezoid(dens[inside], grid[inside])
        first = (-((1 - b * b) ** (k + 1)) + (1 - a * a) ** (k + 1)) / (2 * (k + 1))
        assert centroid == pytest.approx(first / mass, rel=2e-3, abs=1e-6)


def test_beta_codebook_beats_gaussian_codebook_under_the_exact_law_and_is_a_local_minimum() -> None:
    moments = _moments(beta_density(64), -1.0, 1.0, 1 << 18)
    for bits in (2, 3, 4):
        beta = compute_codebook(bits, 64, "beta")
        gauss = compute_codebook(bits, 64, "gaussian")
        assert beta.mse_per_coord < distortion(moments, gauss.centroids, gauss.boundaries)
        nudged = beta.centroids * 1.02
        assert beta.mse_per_coord < distortion(moments, nudged, 0.5 * (nudged[1:] + nudged[:-1]))
        # The exact law's outer centroid is a few percent inside the Gaussian one at d = 64.
        assert 0.95 < beta.centroids[-1] / gauss.centroids[-1] < 1.0


def test_distortion_matches_known_lloyd_max_values() -> None:
    expected = {1: 1 - 2 / math.pi, 2: 0.1175, 3: 0.03454, 4: 0.009497}
    for bits, value in expected.items():
        assert compute_codebook(bits, 1, "gaussian").mse_per_coord == pytest.approx(value, rel=2e-3)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="bits"):
        compute_codebook(0, 64)
    with pytest.raises(ValueError, match="dim >= 3"):
        compute_codebook(2, 2, "beta")


@pytest.mark.parametrize(("bits", "dim"), [(3, 3), (4, 3), (3, 4), (6, 5)])
def test_a_low_dimension_codebook_is_finite_and_inside_the_support(bits: int, dim: int) -> None:
    """dim 3–5 at 3+ bits: the N(0, 1/dim) start put centroids past ±1, whose empty cells ran Lloyd-Max to its
    iteration cap and printed a NaN distortion (not JSON). dim 3's law is uniform on [−1, 1]: its optimum is the
    uniform quantizer, MSE (2/2^bits)²/12 per coordinate."""
    book = compute_codebook(bits, dim, "beta")
    assert np.all(np.diff(book.centroids) > 0) and book.centroids[0] > -1 and book.centroids[-1] < 1
    assert math.isfinite(book.d_mse) and book.iterations < 20_000
    if dim == 3:
        step = 2 / 2**bits
        assert book.centroids == pytest.approx(np.arange(-1 + step / 2, 1, step), abs=1e-6)
        assert book.d_mse == pytest.approx(dim * step**2 / 12, rel=1e-4)
