from __future__ import annotations

import torch

from margin.kv.fidelity import attention_metrics, method_fidelity
from margin.kv.methods import get_method
from margin.kv.model import Captured


def _qkv(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(6, 40, 64, generator=gen) * 2
    k = torch.randn(2, 40, 64, generator=gen) * 2
    v = torch.randn(2, 40, 64, generator=gen)
    return q, k, v


def test_identical_keys_give_zero_divergence() -> None:
    q, k, v = _qkv(0)
    m = attention_metrics(q, k, v, k, v)
    assert m["softmax_kl"] == 0.0
    assert m["score_mse"] == 0.0
    assert m["topk_overlap"] == 1.0
    assert m["output_rel_err"] == 0.0


def test_metrics_grow_with_key_noise() -> None:
    q, k, v = _qkv(1)
    small = attention_metrics(q, k, v, k + 0.05 * torch.randn_like(k), v)
    large = attention_metrics(q, k, v, k + 0.5 * torch.randn_like(k), v)
    assert 0 < small["softmax_kl"] < large["softmax_kl"]
    assert large["topk_overlap"] < small["topk_overlap"] <= 1.0
    assert small["score_mse"] < large["score_mse"]


def test_method_fidelity_orders_bit_widths() -> None:
    q, k, v = _qkv(2)
    captured = Captured([q, q], [k, k], [v, v])
    four = method_fidelity(get_method("tq-mse-4"), captured, head_dim=64, seed=0)
    two = method_fidelity(get_method("tq-mse-2"), captured, head_dim=64, seed=0)
    assert four["key_rel_mse"] < two["key_rel_mse"]
    assert four["softmax_kl"] < two["softmax_kl"]
    assert abs(four["key_rel_mse"] - 0.0091) < 0.003  # Gaussian keys: ≈ the unit-vector D_mse
