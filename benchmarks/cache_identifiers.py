"""What the identifier rule of the semantic cache costs and saves on labelled question pairs.

    python benchmarks/cache_identifiers.py [--limit 4000] [--vectors-dir DIR]

The seed-0 split of `margin eval cache` (populate with the `a` side of half the pairs, query with the `b` side of
the other half), answered with the shipped thresholds (`calibration.json`) twice: without the rule, and with it
(an entry is served only when both questions hold the same names, ids and numbers; `margin.cache.identifiers`).
Reports per δ the share of queries served and of false hits (served a non-duplicate), plus the share of all
duplicate / non-duplicate pairs the rule keeps compatible. `--limit` keeps the first pairs (embedding 120k
questions with MiniLM takes long on a small CPU); `--vectors-dir` reuses embeddings across runs.
Writes benchmarks/results/cache_identifiers.json with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from margin.cache.calibration import load_calibration
from margin.cache.identifiers import Identifiers
from margin.cache.semantic import SemanticCache
from margin.evals.cache import CONTEXT, SCOPE, PairSet, default_pairs, embed_pairs, load_pairs, split_rows

RESULTS = Path(__file__).resolve().parent / "results"


def _encoder_unused(texts: list[str]) -> Any:
    raise RuntimeError("vectors are passed in")


def served(pairs: PairSet, vectors: Any, ids: list[Identifiers] | None) -> tuple[Any, Any]:
    """(similarity of the served entry, whether it is correct) per held-out query; the rule applies with ids."""
    _, rows = split_rows(len(pairs), 0.5, 0)
    entries = list(dict.fromkeys(int(i) for i in pairs.a[rows]))
    dim = vectors.shape[1]
    cache = SemanticCache(_encoder_unused, threshold=-1.0, max_entries=len(entries) + 1, ttl_s=None, dim=dim)
    for entry in entries:
        cache.add_vector(SCOPE, CONTEXT, vectors[entry], str(entry), identifiers=ids[entry] if ids else None)
    similarity, correct = np.full(len(rows), -1.0), np.zeros(len(rows), dtype=bool)
    for n, row in enumerate(rows):
        query = int(pairs.b[row])
        hit = cache.nearest(SCOPE, CONTEXT, vectors[query], ids[query] if ids else None)
        if hit is not None:
            similarity[n] = hit.similarity
            correct[n] = int(hit.key) == query or (int(hit.key), query) in pairs.positives
    return similarity, correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=4000)
    parser.add_argument("--vectors-dir", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()
    pairs = load_pairs(default_pairs(), args.limit)
    started = time.perf_counter()
    vectors = embed_pairs(pairs, args.vectors_dir, None)
    embed_s = time.perf_counter() - started
    ids = [Identifiers.of(text) for text in pairs.texts]
    compatible = [ids[int(a)].compatible(ids[int(b)]) for a, b in zip(pairs.a, pairs.b, strict=True)]
    duplicate = pairs.duplicate.tolist()
    result: dict[str, Any] = {
        "benchmark": "cache_identifiers",
        "pairs": len(pairs),
        "embed_s": round(embed_s, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "pairs_kept_compatible": {
            "duplicates": round(sum(c for c, d in zip(compatible, duplicate, strict=True) if d) / sum(duplicate), 3),
            "non_duplicates": round(
                sum(c for c, d in zip(compatible, duplicate, strict=True) if not d) / (len(duplicate) - sum(duplicate)),
                3,
            ),
        },
        "held_out": {},
    }
    runs = {"without_rule": served(pairs, vectors, None), "with_rule": served(pairs, vectors, ids)}
    for delta, threshold in sorted(load_calibration().items()):
        row: dict[str, Any] = {"threshold": round(threshold, 4)}
        for name, (similarity, correct) in runs.items():
            hit = similarity >= threshold
            row[name] = {"served": round(float(hit.mean()), 4), "false_hits": round(float((hit & ~correct).mean()), 4)}
        result["held_out"][str(delta)] = row
    result["queries"] = len(runs["with_rule"][0])
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "cache_identifiers.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
