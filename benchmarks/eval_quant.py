"""End-to-end quantization experiment on the local model (issue 16's proof), as a user would run it:

    nice python benchmarks/eval_quant.py [--models ~/.cache/margin/models] [--out benchmarks/results/eval_quant]

1. `margin models quantize`: F16 from the shipped Q4_1 (gguf), then Q8_0, Q4_K_M, Q3_K_M, Q2_K (llama.cpp),
   with models.json (sizes, load times) and a `margin serve` config serving all six variants;
2. `margin eval run`: builtin:smol-basics (100 generated items) × 6 variants through that gateway
   (greedy, 16 tokens; cost from x-margin-cost-usd, energy and carbon from the ledger rows);
3. `margin eval perplexity`: perplexity and KL vs F16 of every variant on ShareGPT text (offline wheel);
4. `margin eval report`: report.md/html + pareto.png. The GGUF files stay in --models (not in git).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

VARIANTS = ("Q4_1", "F16", "Q8_0", "Q4_K_M", "Q3_K_M", "Q2_K")


def margin(*args: str) -> None:
    command = [sys.executable, "-m", "margin", *args]
    print("$ margin " + " ".join(args), flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("~/.cache/margin/models").expanduser())
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/eval_quant"))
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--ppl-tokens", type=int, default=4096)
    parser.add_argument("--redo-perplexity", action="store_true", help="even when perplexity.json exists")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    config = args.models / "margin-quant.yaml"
    quantized = ",".join(v for v in VARIANTS if v not in ("Q4_1", "F16"))
    margin("models", "quantize", "--types", quantized, "--out", str(args.models), "--config-out", str(config))
    (args.out / "models.json").write_bytes((args.models / "models.json").read_bytes())
    experiment = {
        "name": "smol-quant",
        "suite": "builtin:smol-basics",
        "limit": args.limit,
        "seed": 0,
        "concurrency": 1,
        "warmup": 2,
        "order": "interleaved",
        "baseline": "q4_1",
        "target": {"serve_config": str(config)},
        "defaults": {"max_tokens": 16, "temperature": 0},
        "variants": [{"name": v.lower(), "model": f"smollm2-{v.lower()}", "quantization": v} for v in VARIANTS],
    }
    spec = args.out / "experiment.yaml"
    spec.write_text(yaml.safe_dump(experiment, sort_keys=False), encoding="utf-8")
    margin("eval", "run", str(spec), "--out", str(args.out))
    files = [f"{v}={args.models / f'smollm2-135m-{v.lower()}.gguf'}" for v in VARIANTS if v != "Q4_1"]
    files.insert(0, "Q4_1=builtin:smollm2-135m-q4_1")
    ppl = ["eval", "perplexity", "--reference", "F16", "--tokens", str(args.ppl_tokens)]
    ppl += [arg for f in files for arg in ("--model", f)]
    if args.redo_perplexity or not (args.out / "perplexity.json").is_file():
        margin(*ppl, "--out", str(args.out / "perplexity.json"))
    margin("eval", "report", str(args.out))
    print(f"load average now: {os.getloadavg()}")


if __name__ == "__main__":
    main()
