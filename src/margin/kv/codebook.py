"""Lloyd-Max scalar codebooks for the coordinates of a randomly rotated unit vector.

After a uniformly random rotation, one coordinate x of a unit vector in R^d follows the law
f(x) ∝ (1 − x²)^((d−3)/2) on [−1, 1] (a Beta law mapped to [−1, 1]); for large d it is ≈ N(0, 1/d).
`lloyd_max` finds the b-bit quantizer that minimises E[(x − q(x))²] for such a density by alternating
the two optimality conditions (boundaries at centroid midpoints, centroids at cell conditional means)
on exact cumulative integrals computed on a fine grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
Law = Literal["beta", "gaussian"]

# Published Lloyd-Max centroids of N(0, 1), positive half (DESIGN §9; Max 1960). Multiply by 1/√d.
PUBLISHED_GAUSSIAN_CENTROIDS: dict[int, tuple[float, ...]] = {
    1: (0.7979,),
    2: (0.4528, 1.5104),
    3: (0.2451, 0.7560, 1.3440, 2.1520),
    4: (0.1284, 0.3880, 0.6568, 0.9423, 1.2562, 1.6180, 2.0690, 2.7326),
}
# TurboQuant paper's rounded D_mse for unit vectors and D_prod·d for unit vectors, b = 1..4.
PAPER_D_MSE: dict[int, float] = {1: 0.36, 2: 0.117, 3: 0.03, 4: 0.009}
PAPER_D_PROD_TIMES_D: dict[int, float] = {1: 1.57, 2: 0.56, 3: 0.18, 4: 0.047}


@dataclass(frozen=True)
class Codebook:
    """A symmetric scalar quantizer: 2^bits sorted centroids and the 2^bits − 1 boundaries between them."""

    bits: int
    law: str
    dim: int
    centroids: FloatArray
    boundaries: FloatArray
    mse_per_coord: float  # E[(x − q(x))²] under the law
    iterations: int

    @property
    def d_mse(self) -> float:
        """Expected ‖x − x̂‖² for a unit vector in R^dim (the sum over its dim coordinates)."""
        return self.mse_per_coord * self.dim


@dataclass(frozen=True)
class _Moments:
    """Cumulative integrals of f, x·f and x²·f on a grid: exact enough to evaluate any cell by interpolation."""

    grid: FloatArray
    mass: FloatArray
    first: FloatArray
    second: FloatArray

    def cell(self, lo: FloatArray, hi: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        def between(table: FloatArray) -> FloatArray:
            return np.interp(hi, self.grid, table) - np.interp(lo, self.grid, table)

        return between(self.mass), between(self.first), between(self.second)


def _cumulative(grid: FloatArray, values: FloatArray) -> FloatArray:
    steps = 0.5 * (values[1:] + values[:-1]) * np.diff(grid)
    return np.concatenate([[0.0], np.cumsum(steps)])


def _moments(density: Callable[[FloatArray], FloatArray], lo: float, hi: float, points: int) -> _Moments:
    grid = np.linspace(lo, hi, points)
    f = density(grid)
    f = f / _cumulative(grid, f)[-1]
    return _Moments(grid, _cumulative(grid, f), _cumulative(grid, grid * f), _cumulative(grid, grid * grid * f))


def beta_density(dim: int) -> Callable[[FloatArray], FloatArray]:
    """Unnormalised density of one coordinate of a uniform unit vector in R^dim."""
    if dim < 3:
        raise ValueError(f"the coordinate law needs dim >= 3, got {dim}")
    exponent = (dim - 3) / 2.0

    def density(x: FloatArray) -> FloatArray:
        return np.power(np.clip(1.0 - x * x, 0.0, None), exponent)

    return density


def gaussian_density(variance: float) -> Callable[[FloatArray], FloatArray]:
    def density(x: FloatArray) -> FloatArray:
        return np.exp(-0.5 * x * x / variance)

    return density


def lloyd_max(
    moments: _Moments, bits: int, start: FloatArray, *, tol: float = 1e-12, max_iter: int = 20000
) -> tuple[FloatArray, FloatArray, float, int]:
    """Alternate the Lloyd-Max conditions from `start` until centroids move less than `tol`."""
    centroids = np.sort(np.asarray(start, dtype=np.float64))
    if centroids.size != 2**bits:
        raise ValueError(f"need {2**bits} starting centroids, got {centroids.size}")
    lo_edge, hi_edge = float(moments.grid[0]), float(moments.grid[-1])
    iteration = 0
    for iteration in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        boundaries = 0.5 * (centroids[1:] + centroids[:-1])
        edges_lo = np.concatenate([[lo_edge], boundaries])
        edges_hi = np.concatenate([boundaries, [hi_edge]])
        mass, first, _ = moments.cell(edges_lo, edges_hi)
        updated = first / np.maximum(mass, 1e-300)
        shift = float(np.max(np.abs(updated - centroids)))
        centroids = updated
        if shift < tol:
            break
    boundaries = 0.5 * (centroids[1:] + centroids[:-1])
    mse = distortion(moments, centroids, boundaries)
    return centroids, boundaries, mse, iteration


def distortion(moments: _Moments, centroids: FloatArray, boundaries: FloatArray) -> float:
    """E[(x − q(x))²] of the quantizer (centroids, boundaries) under the law of `moments`."""
    edges_lo = np.concatenate([[moments.grid[0]], boundaries])
    edges_hi = np.concatenate([boundaries, [moments.grid[-1]]])
    mass, first, second = moments.cell(edges_lo, edges_hi)
    return float(np.sum(second - 2.0 * centroids * first + centroids * centroids * mass))


def _gaussian_start(bits: int, scale: float) -> FloatArray:
    if bits in PUBLISHED_GAUSSIAN_CENTROIDS:
        half = np.array(PUBLISHED_GAUSSIAN_CENTROIDS[bits])
        return np.concatenate([-half[::-1], half]) * scale
    # Uniform quantiles of N(0, 1) as a start for other rates.
    probs = (np.arange(2**bits) + 0.5) / 2**bits
    return np.array([math.sqrt(2.0) * _erfinv(2.0 * p - 1.0) for p in probs]) * scale


def _erfinv(y: float) -> float:
    """Inverse error function by bisection (only used for starting points)."""
    lo, hi = -6.0, 6.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if math.erf(mid) < y:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def compute_codebook(bits: int, dim: int, law: Law = "beta", *, points: int = 1 << 18) -> Codebook:
    """The Lloyd-Max codebook for one coordinate of a rotated unit vector in R^dim.

    law="beta" uses the exact coordinate law; law="gaussian" the N(0, 1/dim) approximation.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    scale = 1.0 / math.sqrt(dim)
    if law == "beta":
        moments = _moments(beta_density(dim), -1.0, 1.0, points)
    else:
        moments = _moments(gaussian_density(scale * scale), -12.0 * scale, 12.0 * scale, points)
    start = _gaussian_start(bits, scale)
    if start[0] <= moments.grid[0] or start[-1] >= moments.grid[-1]:
        start = _quantile_start(moments, bits)
    centroids, boundaries, mse, iterations = lloyd_max(moments, bits, start)
    return Codebook(bits, law, dim, centroids, boundaries, mse, iterations)


def _quantile_start(moments: _Moments, bits: int) -> FloatArray:
    """Centroids at the law's own quantiles (cells of equal mass). For a start whose outer centroids lie past
    the law's support (the beta law of dim 3–5 at 3+ bits: N(0, 1/dim)'s quantiles reach beyond ±1), whose
    empty cells sent Lloyd-Max to 20,000 iterations and a NaN distortion."""
    probs = (np.arange(2**bits) + 0.5) / 2**bits
    return np.asarray(np.interp(probs, moments.mass, moments.grid), dtype=np.float64)


def unit_gaussian_centroids(bits: int) -> FloatArray:
    """Lloyd-Max centroids of N(0, 1) (positive half), to compare with PUBLISHED_GAUSSIAN_CENTROIDS."""
    book = compute_codebook(bits, 1, "gaussian")
    return np.asarray(book.centroids[2 ** (bits - 1) :], dtype=np.float64)
