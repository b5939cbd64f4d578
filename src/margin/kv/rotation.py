"""Fixed random rotations of R^d: a Haar-random orthogonal matrix or a randomized Hadamard transform."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

RotationKind = Literal["orthogonal", "hadamard"]


def _generator(seed: int) -> torch.Generator:
    import torch

    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return gen


def random_orthogonal(dim: int, seed: int) -> torch.Tensor:
    """A Haar-random orthogonal dim×dim matrix (QR of a Gaussian matrix with the sign of R's diagonal fixed)."""
    import torch

    gaussian = torch.randn(dim, dim, generator=_generator(seed), dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    fixed: torch.Tensor = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return fixed.to(torch.float32)


def hadamard(dim: int) -> torch.Tensor:
    """The normalised Sylvester Hadamard matrix H/√dim (dim a power of two)."""
    import torch

    if dim < 1 or dim & (dim - 1):
        raise ValueError(f"a Hadamard rotation needs a power-of-two dimension, got {dim}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < dim:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)], dim=0)
    scaled: torch.Tensor = h / dim**0.5
    return scaled.to(torch.float32)


def randomized_hadamard(dim: int, seed: int) -> torch.Tensor:
    """H·D with D a random ±1 diagonal: orthogonal, applied in O(d log d) by real kernels (here as a matrix)."""
    import torch

    signs = torch.randint(0, 2, (dim,), generator=_generator(seed)).to(torch.float32) * 2.0 - 1.0
    return hadamard(dim) * signs.unsqueeze(0)


def make_rotation(kind: RotationKind, dim: int, seed: int) -> torch.Tensor:
    """Rotation matrix Π; a row vector x is rotated as x @ Π.T and restored as y @ Π."""
    if kind == "hadamard":
        return randomized_hadamard(dim, seed)
    return random_orthogonal(dim, seed)
