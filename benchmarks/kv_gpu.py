"""KV codecs on a GPU: encode+decode throughput and attention fidelity, per method, next to the same run on
the host CPU. Keys are synthetic with the per-channel outlier structure of real LLM keys (a few channels 10×
larger), at SmolLM2-135M's shape (head_dim 64, 3 KV heads, 9 query heads); real-key fidelity is in
kv_eval.json (CPU).

    python benchmarks/kv_gpu.py [--tokens 16384] [--out benchmarks/results/kv_gpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from margin.kv.methods import get_method

METHODS = ("fp16", "fp8", "kivi-4", "had-int4", "tq-mse-4", "tq-mse-3", "tq-prod-4")


def to_device(obj: Any, device: str, seen: set[int] | None = None) -> None:
    """Move every tensor attribute of a codec (and of the codecs inside it) to `device`."""
    seen = seen if seen is not None else set()
    if id(obj) in seen or not hasattr(obj, "__dict__"):
        return
    seen.add(id(obj))
    for name, value in vars(obj).items():
        if isinstance(value, torch.Tensor):
            setattr(obj, name, value.to(device))
        elif hasattr(value, "__dict__") and type(value).__module__.startswith("margin"):
            to_device(value, device, seen)


def keys(tokens: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    scale = torch.ones(64)
    scale[torch.randperm(64, generator=gen)[:4]] = 10.0  # outlier channels
    k = torch.randn(3, tokens, 64, generator=gen) * scale
    q = torch.randn(9, 64, generator=gen) * scale
    return k.to(device), q.to(device)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(name: str, device: str, tokens: int) -> dict[str, Any]:
    codec = get_method(name).build(64, 1)[0].key
    to_device(codec, device)
    k, q = keys(tokens, device)
    with torch.device(device):  # tensors the codecs create while packing land on the same device
        codec.decode(codec.encode(k[:, :256]))  # warm-up (kernels, lazy state)
        sync(device)
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            decoded = codec.decode(codec.encode(k))
            sync(device)
            runs.append(time.perf_counter() - started)
    seconds = sorted(runs)[len(runs) // 2]
    qh = q.view(3, 3, 64)  # 3 query heads per KV head
    exact = torch.softmax(qh @ k.transpose(-1, -2) / 8.0, dim=-1)
    approx = torch.softmax(qh @ decoded.float().transpose(-1, -2) / 8.0, dim=-1)
    kl = (exact * (exact.clamp_min(1e-12).log() - approx.clamp_min(1e-12).log())).sum(-1).mean()
    return {
        "encode_decode_ms": round(seconds * 1000, 3),
        "mtokens_per_s": round(3 * tokens / seconds / 1e6, 3),
        "attention_kl": float(kl),
        "key_rel_mse": float(((decoded.float() - k) ** 2).sum() / (k**2).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/kv_gpu.json"))
    args = parser.parse_args()
    devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    results: dict[str, Any] = {}
    for device in devices:
        for name in METHODS:
            try:
                results.setdefault(device, {})[name] = measure(name, device, args.tokens)
            except Exception as exc:  # a codec that cannot run there is reported, not hidden
                results.setdefault(device, {})[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            print(device, name, results[device][name], flush=True)
    report = {
        "benchmark": "kv_gpu",
        "tokens_per_head": args.tokens,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
