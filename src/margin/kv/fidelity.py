"""Part 2 of the evaluation: attention fidelity on real SmolLM2 queries and keys, per method.

For every layer and query head: causal scores q·kᵀ/√d with exact and with decompressed keys; their MSE, the
KL divergence of the softmax rows, the overlap of the top-k attended positions, and the relative error of the
attention output when values are decompressed too.
"""

from __future__ import annotations

from typing import Any

from margin.kv.codecs import stream_roundtrip
from margin.kv.methods import KVMethod

TOP_K = 8


def attention_metrics(q: Any, k: Any, v: Any, k_hat: Any, v_hat: Any, *, top_k: int = TOP_K) -> dict[str, float]:
    """q: (heads, T, d); k, v and their reconstructions: (kv_heads, T, d). Means over heads and query rows."""
    import torch

    group = q.shape[0] // k.shape[0]
    scale = q.shape[-1] ** -0.5
    tokens = q.shape[1]
    causal = torch.ones(tokens, tokens, dtype=torch.bool).tril()
    s = (q @ k.repeat_interleave(group, 0).transpose(-1, -2)) * scale
    s_hat = (q @ k_hat.repeat_interleave(group, 0).transpose(-1, -2)) * scale
    logp = torch.log_softmax(s.masked_fill(~causal, float("-inf")), dim=-1)
    logp_hat = torch.log_softmax(s_hat.masked_fill(~causal, float("-inf")), dim=-1)
    diff = (logp - logp_hat).masked_fill(~causal, 0.0)
    kl = (logp.exp() * diff).sum(dim=-1)
    score_err = (s - s_hat).masked_select(causal)
    rows = slice(top_k - 1, None)
    top = logp[:, rows].topk(top_k, dim=-1).indices
    top_hat = logp_hat[:, rows].topk(top_k, dim=-1).indices
    overlap = (top.unsqueeze(-1) == top_hat.unsqueeze(-2)).any(dim=-1).float().mean()
    out = logp.exp() @ v.repeat_interleave(group, 0)
    out_hat = logp_hat.exp() @ v_hat.repeat_interleave(group, 0)
    return {
        "score_mse": float(score_err.pow(2).mean()),
        "score_var": float(s.masked_select(causal).var()),
        "softmax_kl": float(kl.mean()),
        "topk_overlap": float(overlap),
        "output_rel_err": float((out - out_hat).pow(2).sum() / out.pow(2).sum()),
    }


def method_fidelity(method: KVMethod, captured: Any, *, head_dim: int, seed: int) -> dict[str, Any]:
    """Average the metrics over all layers; also the worst layer's softmax KL."""
    import torch

    layers = len(captured.keys)
    codecs = method.build(head_dim, layers, seed)
    per_layer: list[dict[str, float]] = []
    with torch.no_grad():
        for idx, pair in enumerate(codecs):
            k, v = captured.keys[idx], captured.values[idx]
            k_hat = stream_roundtrip(pair.key, k.unsqueeze(0))[0]
            v_hat = stream_roundtrip(pair.value, v.unsqueeze(0))[0]
            per_layer.append(attention_metrics(captured.queries[idx], k, v, k_hat, v_hat))
            per_layer[-1]["key_rel_mse"] = float((k - k_hat).pow(2).sum() / k.pow(2).sum())
    keys = per_layer[0].keys()
    summary: dict[str, Any] = {key: sum(row[key] for row in per_layer) / layers for key in keys}
    summary["softmax_kl_worst_layer"] = max(row["softmax_kl"] for row in per_layer)
    return summary


def run_attention(loaded: Any, methods: list[KVMethod], input_ids: Any, *, seed: int) -> dict[str, Any]:
    from margin.kv.model import capture_qkv

    captured = capture_qkv(loaded, input_ids)
    rows = {m.name: method_fidelity(m, captured, head_dim=loaded.head_dim, seed=seed) for m in methods}
    return {"tokens": int(input_ids.shape[-1]), "top_k": TOP_K, "methods": rows}
