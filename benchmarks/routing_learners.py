"""Learner comparison including the MiniLM learners, on the prompts whose MiniLM embedding is already cached.

`margin eval routing` with MiniLM learners embeds every prompt first (about 1.3M tokens for MMLU; roughly an
hour on a busy 2-core machine). This script evaluates every learner and the baselines on the same subset:
all of GSM8K once cached, and the cached part of MMLU (the cache fills in prompt-hash order, so a partial
cache is a random sample across subjects). Splits are the same as `margin eval routing` (leave-subjects-out).

    PYTHONPATH=src python benchmarks/routing_learners.py --cache /tmp/route/emb.npz \
        --out benchmarks/results/routing_learners.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from margin.evals.routing import evaluate_dataset
from margin.routing import learners as lrn
from margin.routing.features import EmbeddingCache
from margin.routing.metrics import summary
from margin.routing.routellm import default_data_dir, load_dataset


def no_encoder(texts: list[str]) -> None:
    raise RuntimeError("only cached prompts are evaluated")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--learners", default=",".join(spec.name for spec in lrn.LEARNERS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    specs = [lrn.learner(name) for name in args.learners.split(",")]
    cache = EmbeddingCache(args.cache, no_encoder)
    results = {}
    for name in ("mmlu", "gsm8k"):
        examples = load_dataset(args.data, name)
        kept = [e for e, hit in zip(examples, cache.cached([e.prompt for e in examples]), strict=True) if hit]
        embeddings = cache.embed([e.prompt for e in kept])
        result = evaluate_dataset(name, kept, embeddings, specs, router="lr-ngrams")
        results[name] = {
            "n": result.n,
            "of": len(examples),
            "subjects": len({e.group for e in kept}),
            "baselines": {m: summary(r.curve) for m, r in result.methods.items() if m != "margin"},
            "learners": {m: {**summary(r.curve), "fit_s": result.fit_seconds[m]} for m, r in result.learners.items()},
        }
        print(name, json.dumps(results[name], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
