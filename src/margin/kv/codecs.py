"""The codec interface and TurboQuant (MSE, prod with a 1-bit QJL residual, and the outlier split).

A codec turns float vectors x of shape (..., T, d) into an `Encoded` bundle of real tensors (packed codes,
fp16 norms and scales) and back. Every tensor of a bundle keeps tokens (or token groups) on axis −2, so
bundles of successive tokens concatenate, and `Encoded.nbytes` is the storage the cache really holds.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from margin.kv.codebook import Codebook
from margin.kv.packing import pack_bits, unpack_bits
from margin.kv.rotation import RotationKind, make_rotation

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Encoded:
    """Compressed vectors: named tensors whose axis −2 runs over tokens (or groups of tokens)."""

    parts: dict[str, torch.Tensor]
    tokens: int
    children: tuple[Encoded, ...] = field(default=())

    @property
    def nbytes(self) -> int:
        own = sum(t.numel() * t.element_size() for t in self.parts.values())
        return own + sum(child.nbytes for child in self.children)

    def cat(self, other: Encoded) -> Encoded:
        import torch

        parts = {k: torch.cat([v, other.parts[k]], dim=-2) for k, v in self.parts.items()}
        kids = tuple(a.cat(b) for a, b in zip(self.children, other.children, strict=True))
        return Encoded(parts, self.tokens + other.tokens, kids)


class Codec(ABC):
    """Compresses vectors along their last axis. `token_group` > 1 means tokens are encoded in groups."""

    name: str = "codec"
    bits: float = 16.0
    token_group: int = 1

    @abstractmethod
    def encode(self, x: torch.Tensor) -> Encoded: ...

    @abstractmethod
    def decode(self, enc: Encoded) -> torch.Tensor: ...

    def roundtrip(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)).to(x.dtype)


def _split_norm(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x32 = x.float()
    norm = x32.norm(dim=-1, keepdim=True)
    return x32 / norm.clamp_min(1e-30), norm


class TurboQuantMSE(Codec):
    """TurboQuant_mse: store ‖x‖ (fp16), rotate x/‖x‖, quantize each coordinate with a Lloyd-Max codebook."""

    def __init__(self, codebook: Codebook, *, rotation: RotationKind = "orthogonal", seed: int = 0) -> None:
        import torch

        self.codebook = codebook
        self.bits = float(codebook.bits)
        self.dim = codebook.dim
        self.name = f"tq-mse-{codebook.bits}"
        self.rotation = make_rotation(rotation, codebook.dim, seed)
        self.centroids = torch.tensor(codebook.centroids, dtype=torch.float32)
        self.boundaries = torch.tensor(codebook.boundaries, dtype=torch.float32)

    def quantize_unit(self, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes and the dequantized vector for unit vectors (rows)."""
        import torch

        codes = torch.bucketize(unit @ self.rotation.T, self.boundaries).to(torch.uint8)
        return codes, self.dequantize_unit(codes)

    def dequantize_unit(self, codes: torch.Tensor) -> torch.Tensor:
        return self.centroids[codes.long()] @ self.rotation

    def encode(self, x: torch.Tensor) -> Encoded:
        unit, norm = _split_norm(x)
        codes, _ = self.quantize_unit(unit)
        parts = {"codes": pack_bits(codes, self.codebook.bits), "norm": norm.half()}
        return Encoded(parts, x.shape[-2])

    def decode(self, enc: Encoded) -> torch.Tensor:
        codes = unpack_bits(enc.parts["codes"], self.codebook.bits)
        return self.dequantize_unit(codes) * enc.parts["norm"].float()


class TurboQuantProd(Codec):
    """TurboQuant_prod: (b−1)-bit TurboQuant_mse plus a 1-bit QJL sketch sign(S·r) of the residual r.

    Decoding returns x̂ = ‖x‖·(û + ‖r‖·√(π/2)/d · Sᵀ·sign(S·r)), so ⟨y, x̂⟩ is an unbiased estimate of ⟨y, x⟩.
    """

    def __init__(
        self,
        bits: int,
        dim: int,
        mse_codebook: Codebook | None,
        *,
        rotation: RotationKind = "orthogonal",
        seed: int = 0,
    ) -> None:
        import torch

        if bits < 1 or (bits > 1) != (mse_codebook is not None):
            raise ValueError("TurboQuant_prod with b bits needs a (b-1)-bit codebook (none when b = 1)")
        self.bits = float(bits)
        self.dim = dim
        self.name = f"tq-prod-{bits}"
        self.mse = TurboQuantMSE(mse_codebook, rotation=rotation, seed=seed) if mse_codebook is not None else None
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed + 7919)
        self.sketch = torch.randn(dim, dim, generator=gen, dtype=torch.float32)
        self.qjl_scale = math.sqrt(math.pi / 2.0) / dim

    def encode(self, x: torch.Tensor) -> Encoded:
        unit, norm = _split_norm(x)
        parts = {"norm": norm.half()}
        residual = unit
        if self.mse is not None:
            codes, approx = self.mse.quantize_unit(unit)
            parts["codes"] = pack_bits(codes, self.mse.codebook.bits)
            residual = unit - approx
        parts["signs"] = pack_bits(residual @ self.sketch.T >= 0, 1)
        parts["gamma"] = residual.norm(dim=-1, keepdim=True).half()
        return Encoded(parts, x.shape[-2])

    def decode(self, enc: Encoded) -> torch.Tensor:
        signs = unpack_bits(enc.parts["signs"], 1).float() * 2.0 - 1.0
        out = (signs @ self.sketch) * (enc.parts["gamma"].float() * self.qjl_scale)
        if self.mse is not None:
            out = out + self.mse.dequantize_unit(unpack_bits(enc.parts["codes"], self.mse.codebook.bits))
        return out * enc.parts["norm"].float()


class OutlierSplit(Codec):
    """Fractional rates: the `outliers` channels of largest norm (per head, fixed at the first encode, i.e.
    calibrated on the prompt) go to one codec with more bits, the other channels to another."""

    def __init__(self, high: Codec, low: Codec, outliers: int, dim: int) -> None:
        self.high, self.low, self.outliers, self.dim = high, low, outliers, dim
        self.bits = (high.bits * outliers + low.bits * (dim - outliers)) / dim
        self.name = f"{low.name.rsplit('-', 1)[0]}-{self.bits:g}"
        self.channels: torch.Tensor | None = None  # (heads, dim): outlier channels first, then the rest

    def _calibrate(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        heads = x.shape[-3] if x.ndim >= 3 else 1
        flat = (
            x.float().reshape(-1, heads, x.shape[-2], self.dim)
            if x.ndim >= 3
            else x.float().reshape(1, 1, -1, self.dim)
        )
        energy = flat.pow(2).sum(dim=(0, 2))
        top = torch.topk(energy, self.outliers, dim=-1).indices.sort(dim=-1).values
        rest = torch.ones_like(energy, dtype=torch.bool).scatter(-1, top, False)
        others = torch.arange(self.dim).expand(heads, -1)[rest].reshape(heads, -1)
        return torch.cat([top, others], dim=-1)

    def _index(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels is None:
            self.channels = self._calibrate(x)
        order = self.channels if x.ndim >= 3 else self.channels[0]
        return order.unsqueeze(-2).expand(*x.shape[:-1], self.dim)

    def encode(self, x: torch.Tensor) -> Encoded:
        permuted = x.gather(-1, self._index(x))
        kids = (self.high.encode(permuted[..., : self.outliers]), self.low.encode(permuted[..., self.outliers :]))
        return Encoded({}, x.shape[-2], kids)

    def decode(self, enc: Encoded) -> torch.Tensor:
        import torch

        permuted = torch.cat([self.high.decode(enc.children[0]), self.low.decode(enc.children[1])], dim=-1)
        return torch.empty_like(permuted).scatter(-1, self._index(permuted), permuted)


def stream_roundtrip(codec: Codec, x: torch.Tensor) -> torch.Tensor:
    """What a cache that stored x (..., T, d) with `codec` hands to attention: whole token groups decoded
    from their encoding, the last incomplete group as stored in fp16."""
    import torch

    full = x.shape[-2] - x.shape[-2] % codec.token_group
    pieces = [codec.decode(codec.encode(x[..., :full, :]))] if full else []
    if full < x.shape[-2]:
        pieces.append(x[..., full:, :].half().float())
    return torch.cat(pieces, dim=-2)
