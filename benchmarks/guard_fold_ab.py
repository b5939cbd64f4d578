"""The guard's look-alike fold: Unicode TR39's confusables (1,354 characters, `confusable-homoglyphs`) against the
hand-kept Cyrillic/Greek table it replaced (51 letters), on the same machine, in turn.

    python benchmarks/guard_fold_ab.py --before OLD_SRC [--after NEW_SRC] [--rounds 4] [--size 200000] [--repeat 5]
        [--out guard_fold_ab.json]

Each round runs one child process per tree, before then after, each with its tree first on PYTHONPATH. A child
times what building the table costs a process once (`InjectionDetector()` then the first non-ASCII `normalize`,
after the imports), then, on guard_scaling.py's inputs of `size` characters, `normalize` and the injection check
(best of `repeat`). Writes benchmarks/results/OUT with every round and the medians; an existing file is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
INPUTS = ("non_ascii", "look_alikes", "clean_prose")


def child(size: int, repeat: int) -> dict[str, float]:
    """Runs in the child: margin comes from the tree on PYTHONPATH."""
    from guard_scaling import inputs
    from margin.guard import InjectionDetector
    from margin.guard.normalize import normalize

    started = time.perf_counter()
    detector = InjectionDetector()
    normalize("é")
    timings = {"first_use_s": time.perf_counter() - started}
    texts = inputs(size)
    for name in INPUTS:
        for stage, work in (("normalize", normalize), ("check", detector.check)):
            best = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                work(texts[name])
                best = min(best, time.perf_counter() - t0)
            timings[f"{name}.{stage}_s"] = best
    return {key: round(value, 5) for key, value in timings.items()}


def run_child(src: str, size: int, repeat: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(Path(__file__).resolve().parent)])}
    command = [sys.executable, __file__, "--child", "--size", str(size), "--repeat", str(repeat)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=600)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="the old tree's src folder")
    parser.add_argument("--after", default=str(Path(__file__).resolve().parents[1] / "src"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--size", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default="guard_fold_ab.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.size, args.repeat)))
        return
    path = RESULTS / args.out
    if path.exists():
        raise SystemExit(f"{path} exists: name a new file with --out")
    load_before = os.getloadavg()
    rounds: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        for tree, src in (("before", args.before), ("after", args.after)):
            rounds[tree].append(run_child(src, args.size, args.repeat))
    medians = {tree: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for tree, runs in rounds.items()}
    result: dict[str, Any] = {
        "benchmark": "guard_fold_ab",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "size": args.size,
        "repeat": args.repeat,
        "load_average_before": [round(x, 2) for x in load_before],
        "medians": medians,
        "rounds": rounds,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(medians, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
