"""Baseline KV formats behind the same `Codec` interface: float casts, KIVI-style ints, Hadamard + int blocks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from margin.kv.codecs import Codec, Encoded
from margin.kv.packing import pack_bits, unpack_bits
from margin.kv.rotation import randomized_hadamard

if TYPE_CHECKING:
    import torch

FloatFormat = Literal["fp16", "bf16", "fp8"]
FP8_MAX = 448.0  # largest finite float8 e4m3fn


class FloatCast(Codec):
    """Store each element as fp16, bf16, or FP8 e4m3 (emulated on CPU: stored as its uint8 bit pattern)."""

    def __init__(self, fmt: FloatFormat) -> None:
        self.fmt = fmt
        self.name = fmt
        self.bits = 8.0 if fmt == "fp8" else 16.0

    def encode(self, x: torch.Tensor) -> Encoded:
        import torch

        if self.fmt == "fp8":
            stored = x.float().clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).view(torch.uint8)
        else:
            stored = x.to(torch.float16 if self.fmt == "fp16" else torch.bfloat16)
        return Encoded({"x": stored}, x.shape[-2])

    def decode(self, enc: Encoded) -> torch.Tensor:
        import torch

        stored = enc.parts["x"]
        if self.fmt == "fp8":
            return stored.view(torch.float8_e4m3fn).float()
        return stored.float()


def _asymmetric(x: torch.Tensor, bits: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Min/max uniform quantization along `dim`: codes, fp16 scale and fp16 minimum."""
    import torch

    lo = x.amin(dim=dim, keepdim=True).half()
    hi = x.amax(dim=dim, keepdim=True).half()
    scale = ((hi.float() - lo.float()) / (2**bits - 1)).clamp_min(1e-8).half()
    codes = torch.round((x - lo.float()) / scale.float()).clamp(0, 2**bits - 1).to(torch.uint8)
    return codes, scale, lo


class KiviPerToken(Codec):
    """KIVI's value format: per token, groups of `group` channels, asymmetric b-bit with fp16 scale and min."""

    def __init__(self, bits: int, group: int = 32, dim: int | None = None) -> None:
        self.bits, self.ibits = float(bits), bits
        self.group = group if dim is None else min(group, dim)
        self.name = f"kivi-token-{bits}"

    def encode(self, x: torch.Tensor) -> Encoded:
        blocks = x.float().reshape(*x.shape[:-1], -1, self.group)
        codes, scale, lo = _asymmetric(blocks, self.ibits, dim=-1)
        parts = {"codes": pack_bits(codes.flatten(-2), self.ibits), "scale": scale.squeeze(-1), "min": lo.squeeze(-1)}
        return Encoded(parts, x.shape[-2])

    def decode(self, enc: Encoded) -> torch.Tensor:
        codes = unpack_bits(enc.parts["codes"], self.ibits).float()
        blocks = codes.reshape(*codes.shape[:-1], -1, self.group)
        out = blocks * enc.parts["scale"].float().unsqueeze(-1) + enc.parts["min"].float().unsqueeze(-1)
        return out.reshape(codes.shape)


class KiviPerChannel(Codec):
    """KIVI's key format: per channel over groups of `group` tokens (the cache keeps the last, incomplete
    group in fp16 until it fills), asymmetric b-bit with one fp16 scale and min per channel and group."""

    def __init__(self, bits: int, group: int = 32) -> None:
        self.bits, self.ibits, self.group = float(bits), bits, group
        self.token_group = group
        self.name = f"kivi-channel-{bits}"

    def encode(self, x: torch.Tensor) -> Encoded:
        tokens = x.shape[-2]
        if tokens % self.group:
            raise ValueError(f"per-channel quantization needs a multiple of {self.group} tokens, got {tokens}")
        groups = x.float().reshape(*x.shape[:-2], tokens // self.group, self.group, x.shape[-1])
        codes, scale, lo = _asymmetric(groups, self.ibits, dim=-2)
        parts = {
            "codes": pack_bits(codes.flatten(-3, -2), self.ibits),
            "scale": scale.squeeze(-2),
            "min": lo.squeeze(-2),
        }
        return Encoded(parts, tokens)

    def decode(self, enc: Encoded) -> torch.Tensor:
        codes = unpack_bits(enc.parts["codes"], self.ibits).float()
        groups = codes.reshape(*codes.shape[:-2], -1, self.group, codes.shape[-1])
        out = groups * enc.parts["scale"].float().unsqueeze(-2) + enc.parts["min"].float().unsqueeze(-2)
        return out.reshape(codes.shape)


class HadamardInt(Codec):
    """llama.cpp q4_0-style blocks after a randomized Hadamard rotation: per block of 32 rotated channels
    one fp16 scale s = m / −2^(b−1) (m the element of largest magnitude) and codes round(x/s) + 2^(b−1)."""

    def __init__(self, bits: int, dim: int, block: int = 32, seed: int = 0) -> None:
        self.bits, self.ibits, self.block = float(bits), bits, min(block, dim)
        self.name = f"had-int{bits}"
        self.rotation = randomized_hadamard(dim, seed)

    def encode(self, x: torch.Tensor) -> Encoded:
        import torch

        half = 2 ** (self.ibits - 1)
        blocks = (x.float() @ self.rotation.T).reshape(*x.shape[:-1], -1, self.block)
        pick = blocks.abs().argmax(dim=-1, keepdim=True)
        scale = (blocks.gather(-1, pick) / -half).half()
        safe = torch.where(scale == 0, torch.ones_like(scale), scale).float()
        codes = (torch.round(blocks / safe) + half).clamp(0, 2 * half - 1).to(torch.uint8)
        return Encoded({"codes": pack_bits(codes.flatten(-2), self.ibits), "scale": scale.squeeze(-1)}, x.shape[-2])

    def decode(self, enc: Encoded) -> torch.Tensor:
        half = 2 ** (self.ibits - 1)
        codes = unpack_bits(enc.parts["codes"], self.ibits).float()
        blocks = (codes.reshape(*codes.shape[:-1], -1, self.block) - half) * enc.parts["scale"].float().unsqueeze(-1)
        restored: torch.Tensor = blocks.reshape(codes.shape) @ self.rotation
        return restored
