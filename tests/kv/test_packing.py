from __future__ import annotations

import pytest
import torch

from margin.kv.packing import pack_bits, unpack_bits


@pytest.mark.parametrize("bits", range(1, 9))
def test_round_trip_and_exact_size(bits: int) -> None:
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (2, 3, 5, 64), generator=gen, dtype=torch.int64).to(torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (2, 3, 5, 64 * bits // 8)
    assert packed.numel() * packed.element_size() == codes.numel() * bits // 8
    assert torch.equal(unpack_bits(packed, bits), codes)


def test_rows_concatenate_after_packing() -> None:
    codes = torch.randint(0, 8, (1, 10, 32), dtype=torch.int64).to(torch.uint8)
    joined = torch.cat([pack_bits(codes[:, :4], 3), pack_bits(codes[:, 4:], 3)], dim=-2)
    assert torch.equal(unpack_bits(joined, 3), codes)


def test_rejects_unpackable_shapes() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_bits(torch.zeros(3, 12, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="bits"):
        pack_bits(torch.zeros(8, dtype=torch.uint8), 9)
    with pytest.raises(ValueError, match="planes"):
        unpack_bits(torch.zeros(5, dtype=torch.uint8), 2)
