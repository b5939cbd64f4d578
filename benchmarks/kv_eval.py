"""KV-cache formats on SmolLM2-135M-Instruct: TurboQuant (MSE and prod/QJL) against fp16, FP8, KIVI-style
int8/int4/int2 and Hadamard + int4/int3 blocks. A thin wrapper over `margin kv eval` (same options).

    python benchmarks/kv_eval.py [--quick] [--parts synthetic,attention,ppl,passkey,speed] [--threads 1]
    python benchmarks/kv_eval.py --parts ppl --ppl-context 2048 --ppl-windows 40 --out /tmp/ppl.json
    margin kv merge /tmp/a.json /tmp/ppl.json --out benchmarks/results/kv_eval.json

Writes benchmarks/results/kv_eval.json and kv_eval.md: config, versions, hardware and, per method, bytes per
token (measured from the tensors the cache holds), synthetic distortion, attention fidelity on real keys and
queries, Δperplexity and token KL against the uncompressed cache, passkey retrieval and CPU decode speed.
The perplexity and passkey parts save after every window / method, so a run cut short still reports exactly
what it measured. Run it niced on a shared machine: it takes tens of minutes on 2 CPU cores.
"""

from __future__ import annotations

import sys

from margin.kv.cli import app

if __name__ == "__main__":
    sys.exit(app(["eval", *sys.argv[1:]]))
