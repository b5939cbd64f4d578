"""Part 1 of the evaluation: TurboQuant distortion on random unit vectors against the paper's values."""

from __future__ import annotations

import math
from typing import Any

from margin.kv.codebook import (
    PAPER_D_MSE,
    PAPER_D_PROD_TIMES_D,
    PUBLISHED_GAUSSIAN_CENTROIDS,
    compute_codebook,
    unit_gaussian_centroids,
)
from margin.kv.codecs import TurboQuantMSE, TurboQuantProd


def _unit_vectors(count: int, dim: int, seed: int) -> Any:
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(count, dim, generator=gen, dtype=torch.float32)
    return x / x.norm(dim=-1, keepdim=True)


def distortion_row(bits: int, dim: int, *, count: int, seed: int, law: str = "beta") -> dict[str, Any]:
    """Measured D_mse, D_prod and the prod estimator's bias for one (bits, dim)."""
    book = compute_codebook(bits, dim, "gaussian" if law == "gaussian" else "beta")
    x = _unit_vectors(count, dim, seed)
    y = _unit_vectors(count, dim, seed + 1)
    mse = TurboQuantMSE(book, seed=seed + 2)
    d_mse = float((x - mse.roundtrip(x)).pow(2).sum(dim=-1).mean())
    lower = compute_codebook(bits - 1, dim, "gaussian" if law == "gaussian" else "beta") if bits > 1 else None
    prod = TurboQuantProd(bits, dim, lower, seed=seed + 3)
    exact = (x * y).sum(dim=-1)
    err_prod = (prod.roundtrip(x) * y).sum(dim=-1) - exact
    err_mse = (mse.roundtrip(x) * y).sum(dim=-1) - exact
    d_prod = float(err_prod.pow(2).mean())
    return {
        "bits": bits,
        "dim": dim,
        "law": law,
        "vectors": count,
        "d_mse": d_mse,
        "d_mse_theory": book.d_mse,
        "d_mse_paper": PAPER_D_MSE[bits],
        "d_mse_vs_paper_pct": 100.0 * (d_mse / PAPER_D_MSE[bits] - 1.0),
        "d_mse_vs_theory_pct": 100.0 * (d_mse / book.d_mse - 1.0),
        "d_prod_times_d": d_prod * dim,
        "d_prod_paper_times_d": PAPER_D_PROD_TIMES_D[bits],
        "d_prod_theory_times_d": math.pi / 2 * (lower.d_mse if lower is not None else 1.0),
        "d_prod_vs_paper_pct": 100.0 * (d_prod * dim / PAPER_D_PROD_TIMES_D[bits] - 1.0),
        "prod_bias": float(err_prod.mean()),
        "prod_bias_stderr": float(err_prod.std() / math.sqrt(count)),
        "mse_inner_product_bias": float(err_mse.mean()),
        "mse_inner_product_error_times_d": float(err_mse.pow(2).mean()) * dim,
        "outer_centroid": float(book.centroids[-1]),
    }


def codebook_check() -> list[dict[str, Any]]:
    """Our Lloyd-Max centroids of N(0, 1) against the published ones, and the Beta law's outer centroid at d=64."""
    rows = []
    for bits, published in PUBLISHED_GAUSSIAN_CENTROIDS.items():
        ours = unit_gaussian_centroids(bits)
        beta64 = compute_codebook(bits, 64, "beta").centroids[-1] * math.sqrt(64)
        rows.append(
            {
                "bits": bits,
                "computed": [round(float(c), 4) for c in ours],
                "published": list(published),
                "max_abs_diff": float(max(abs(a - b) for a, b in zip(ours, published, strict=True))),
                "beta_d64_outer_vs_gaussian_pct": 100.0 * (beta64 / ours[-1] - 1.0),
            }
        )
    return rows


def run_synthetic(*, count: int = 20000, seed: int = 0, dims: tuple[int, ...] = (64, 128)) -> dict[str, Any]:
    rows = [distortion_row(b, d, count=count, seed=seed) for d in dims for b in (1, 2, 3, 4)]
    rows += [distortion_row(b, 64, count=count, seed=seed, law="gaussian") for b in (1, 2, 3, 4)]
    return {"seed": seed, "rows": rows, "codebooks": codebook_check()}
