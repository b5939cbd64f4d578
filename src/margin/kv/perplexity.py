"""Part 3 of the evaluation: perplexity and token-level KL against the uncompressed cache.

Each window is run once with the model's own (uncompressed, float32) cache and once per method with a
`CompressedCache` with quantize_prompt=True, so every attention read of every position, including the
prompt's own, goes through the compressed keys and values.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from margin.kv.methods import KVMethod


def _log_probs(loaded: Any, ids: Any, cache: Any) -> Any:
    import torch

    with torch.no_grad():
        out = loaded.model(input_ids=ids, past_key_values=cache, use_cache=cache is not None)
    return torch.log_softmax(out.logits[0, :-1].float(), dim=-1)


def window_scores(loaded: Any, ids: Any, methods: list[KVMethod], *, seed: int) -> dict[str, dict[str, float]]:
    """Summed NLL, KL(ref‖method) and top-1 agreement over the predicted tokens of one window."""
    from margin.kv.cache import CompressedCache

    targets = ids[0, 1:]
    ref = _log_probs(loaded, ids, None)
    ref_top = ref.argmax(dim=-1)
    reference = {"nll": float(-ref.gather(-1, targets[:, None]).sum()), "kl": 0.0, "top1": float(targets.numel())}
    scores = {"reference": reference}
    for method in methods:
        started = time.perf_counter()
        cache = CompressedCache.for_model(method, loaded.model, quantize_prompt=True, seed=seed)
        logp = _log_probs(loaded, ids, cache)
        kl = (ref.exp() * (ref - logp)).sum(dim=-1)
        scores[method.name] = {
            "nll": float(-logp.gather(-1, targets[:, None]).sum()),
            "kl": float(kl.sum()),
            "top1": float((logp.argmax(dim=-1) == ref_top).float().sum()),
            "seconds": time.perf_counter() - started,
        }
        del cache
    return scores


def summarize(per_window: list[dict[str, dict[str, float]]], predicted: int) -> dict[str, dict[str, float]]:
    names = per_window[0].keys()
    ref_nll = sum(w["reference"]["nll"] for w in per_window) / predicted
    out: dict[str, dict[str, float]] = {}
    for name in names:
        nll = sum(w[name]["nll"] for w in per_window) / predicted
        out[name] = {
            "ppl": math.exp(nll),
            "delta_ppl_pct": 100.0 * (math.exp(nll - ref_nll) - 1.0),
            "kl": sum(w[name]["kl"] for w in per_window) / predicted,
            "top1_agreement": sum(w[name]["top1"] for w in per_window) / predicted,
        }
    return out


def run_perplexity(
    loaded: Any,
    methods: list[KVMethod],
    windows: list[list[int]],
    *,
    seed: int,
    save: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Score the windows in order; `save` receives the summary so far after each window (a run can be cut
    short and still report exactly how many tokens it scored)."""
    import torch

    per_window = []
    result: dict[str, Any] = {}
    for idx, window in enumerate(windows):
        per_window.append(window_scores(loaded, torch.tensor([window]), methods, seed=seed))
        predicted = sum(len(w) - 1 for w in windows[: idx + 1])
        result = {
            "windows": idx + 1,
            "windows_planned": len(windows),
            "context": len(windows[0]),
            "tokens_scored": predicted,
            "methods": summarize(per_window, predicted),
        }
        if save is not None:
            save(result)
    return result
