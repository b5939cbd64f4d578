"""Real bit packing: b-bit integer codes stored b bits each in uint8 tensors.

Codes are packed along the last axis as b bit-planes of n/8 bytes each, so a packed row of n codes takes
exactly n·b/8 bytes and rows of different tokens can be concatenated along any leading axis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _weights() -> torch.Tensor:
    import torch

    return torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in [0, 2^bits) along the last axis (its length a multiple of 8) into uint8 bytes."""
    import torch

    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    n = codes.shape[-1]
    if n % 8:
        raise ValueError(f"the last axis must be a multiple of 8 to pack, got {n}")
    c = codes.to(torch.uint8).reshape(*codes.shape[:-1], n // 8, 8)
    weights = _weights()
    planes = [(((c >> i) & 1) * weights).sum(dim=-1, dtype=torch.uint8) for i in range(bits)]
    return torch.cat(planes, dim=-1)


def unpack_bits(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of pack_bits: uint8 codes with the last axis restored to 8·packed.shape[-1]/bits."""
    import torch

    nbytes = packed.shape[-1]
    if nbytes % bits:
        raise ValueError(f"{nbytes} packed bytes is not a whole number of {bits}-bit planes")
    per_plane = nbytes // bits
    shifts = torch.arange(8, dtype=torch.uint8)
    codes = torch.zeros(*packed.shape[:-1], per_plane, 8, dtype=torch.uint8)
    for i in range(bits):
        plane = packed[..., i * per_plane : (i + 1) * per_plane].unsqueeze(-1)
        codes |= ((plane >> shifts) & 1) << i
    return codes.reshape(*packed.shape[:-1], per_plane * 8)
