from __future__ import annotations

import math
from typing import cast

import pytest
import torch

from margin.kv.baselines import FloatCast, HadamardInt, KiviPerChannel, KiviPerToken
from margin.kv.codebook import compute_codebook
from margin.kv.codecs import OutlierSplit, TurboQuantMSE, TurboQuantProd, stream_roundtrip


def _unit(count: int, dim: int, seed: int) -> torch.Tensor:
    x = torch.randn(count, dim, generator=torch.Generator().manual_seed(seed))
    return cast(torch.Tensor, x / x.norm(dim=-1, keepdim=True))  # torch types Tensor.norm(...) as Any


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_mse_distortion_matches_the_codebook_theory(bits: int) -> None:
    book = compute_codebook(bits, 64, "beta")
    x = _unit(6000, 64, seed=bits)
    d_mse = float((x - TurboQuantMSE(book, seed=1).roundtrip(x)).pow(2).sum(-1).mean())
    assert d_mse == pytest.approx(book.d_mse, rel=0.04)


def test_mse_with_hadamard_rotation_is_close_to_theory() -> None:
    book = compute_codebook(3, 64, "beta")
    x = _unit(4000, 64, seed=9)
    d_mse = float((x - TurboQuantMSE(book, rotation="hadamard", seed=2).roundtrip(x)).pow(2).sum(-1).mean())
    assert d_mse == pytest.approx(book.d_mse, rel=0.06)


def test_prod_estimator_is_unbiased_and_mse_is_not() -> None:
    """Fixed x and y with ⟨x, y⟩ ≈ 0.8: average the estimates over independent rotations and sketches."""
    dim, trials = 64, 300
    x = _unit(1, dim, seed=0)
    noise = _unit(1, dim, seed=1)
    y = 0.8 * x + 0.6 * (noise - (noise * x).sum() * x) / (noise - (noise * x).sum() * x).norm()
    truth = float((x * y).sum())
    book1, book2 = compute_codebook(1, dim), compute_codebook(2, dim)
    prod = torch.tensor([float((TurboQuantProd(2, dim, book1, seed=s).roundtrip(x) * y).sum()) for s in range(trials)])
    mse = torch.tensor([float((TurboQuantMSE(book2, seed=s).roundtrip(x) * y).sum()) for s in range(trials)])
    stderr = float(prod.std()) / math.sqrt(trials)
    assert abs(float(prod.mean()) - truth) < 4 * stderr
    # The MSE quantizer shrinks inner products: biased by far more than its spread.
    mse_stderr = float(mse.std()) / math.sqrt(trials)
    assert truth - float(mse.mean()) > 10 * mse_stderr


def test_prod_bytes_and_shapes() -> None:
    codec = TurboQuantProd(3, 64, compute_codebook(2, 64), seed=0)
    x = torch.randn(1, 3, 10, 64)
    enc = codec.encode(x)
    assert enc.nbytes == 3 * 10 * (64 * 2 // 8 + 64 // 8 + 2 + 2)
    assert codec.decode(enc).shape == x.shape
    pure = TurboQuantProd(1, 64, None, seed=0)
    assert pure.encode(x).nbytes == 3 * 10 * (8 + 4)
    with pytest.raises(ValueError, match="codebook"):
        TurboQuantProd(2, 64, None)


def test_encoded_bundles_concatenate_over_tokens() -> None:
    codec = TurboQuantMSE(compute_codebook(3, 64), seed=0)
    x = torch.randn(1, 2, 12, 64)
    joined = codec.encode(x[..., :5, :]).cat(codec.encode(x[..., 5:, :]))
    assert joined.tokens == 12
    assert torch.allclose(codec.decode(joined), codec.roundtrip(x), atol=1e-6)


def test_float_casts() -> None:
    x = torch.randn(2, 7, 64) * 3
    assert torch.allclose(FloatCast("fp16").roundtrip(x), x, rtol=1e-3, atol=1e-3)
    assert FloatCast("bf16").encode(x).nbytes == x.numel() * 2
    fp8 = FloatCast("fp8")
    assert fp8.encode(x).nbytes == x.numel()
    rel = (fp8.roundtrip(x) - x).abs() / x.abs().clamp_min(0.1)
    assert float(rel.max()) < 0.07
    assert float(fp8.roundtrip(torch.full((1, 8), 1e4)).max()) == 448.0


def test_kivi_formats() -> None:
    x = torch.randn(1, 3, 64, 64)
    token = KiviPerToken(8)
    err = (token.roundtrip(x) - x).abs()
    assert float(err.max()) < float(x.abs().max()) * 2 / 255
    assert token.encode(x).nbytes == 3 * 64 * (64 + 2 * 4)
    channel = KiviPerChannel(4)
    assert channel.token_group == 32
    assert channel.encode(x).nbytes == 3 * (64 * 64 // 2 + 2 * 64 * 4)
    assert float((channel.roundtrip(x) - x).pow(2).mean()) < 0.02
    with pytest.raises(ValueError, match="multiple of 32"):
        channel.encode(x[..., :40, :])
    streamed = stream_roundtrip(channel, x[..., :40, :])
    assert torch.equal(streamed[..., 32:, :], x[..., 32:40, :].half().float())


def test_hadamard_int_blocks() -> None:
    x = torch.randn(1, 3, 16, 64)
    int4 = HadamardInt(4, 64, seed=0)
    assert int4.encode(x).nbytes == 3 * 16 * (2 * (16 + 2))
    rel4 = float((int4.roundtrip(x) - x).pow(2).sum() / x.pow(2).sum())
    rel3 = float((HadamardInt(3, 64, seed=0).roundtrip(x) - x).pow(2).sum() / x.pow(2).sum())
    assert rel4 < 0.02 < rel3 < 0.1


def test_outlier_split_gives_more_bits_to_loud_channels() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 64, 64, generator=gen)
    loud = torch.randperm(64, generator=gen)[:32]
    x[..., loud] *= 8.0
    book = {b: compute_codebook(b, 32) for b in (2, 3)}
    split = OutlierSplit(TurboQuantMSE(book[3], seed=1), TurboQuantMSE(book[2], seed=2), 32, 64)
    assert split.bits == 2.5
    out = split.roundtrip(x)
    assert split.channels is not None
    assert set(split.channels[0, :32].tolist()) == set(loud.tolist())
    err_loud = (out - x)[..., loud].pow(2).sum() / x[..., loud].pow(2).sum()
    assert float(err_loud) < 0.05
    assert split.encode(x).nbytes == 2 * 64 * (12 + 2 + 8 + 2)
