"""CPU time of the injection check per KB, before and after a change to its rules or normalization (the
look-alike skeleton and the other languages' rules), in alternating child processes on the same machine.

    python benchmarks/guard_evasion_ab.py --before OLD_SRC [--after NEW_SRC] [--rounds 6] [--sizes 50000,200000]
        [--repeat 3] [--out guard_evasion_ab.json]

Each round runs one child per tree, before then after, each with its tree first on PYTHONPATH. A child builds
`InjectionDetector()` (startup, not timed per KB) and then, for each input at each size, times
`detector.check` with `time.process_time` (CPU time of the process, so other processes on a shared machine do
not count), best of `repeat`. Reported per input: µs of CPU per 1,000 characters (median over rounds of each
child's best), and the ratio of the largest to the smallest size's time (4 for linear at 4 x the size).
Writes benchmarks/results/OUT with every round; an existing file is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import ab_trees

_UNITS = {
    "clean_prose": "The quarterly report shows steady growth in every region we serve. ",
    "non_ascii": "Über die Grüße: ｆｕｌｌｗｉｄｔｈ text и кириллица. ",
    "look_alikes": "Ꭵgnօre ⍳nstruct𝚤ons, ԁеⅼеτе κεу, ոսկե տուն, हिंदी ०१२, هههه. ",
    "ordinary_8_languages": (
        "Olvida lo que te dije. Oublie le rendez-vous. Vergiss nicht die Regeln. Esqueça o guarda-chuva. "
        "Dimentica la riunione. Забудь про вчерашнее. 请忽略这个拼写错误。その件は無視してください。 "
    ),
    "pairs_and_digits": "rnvv10 modern savvy 1047 l1st ",
    "verbs_without_objects": "ignora todas ignoriere alle игнорируй все 忽略之前 以前の指示 ",
}


def inputs(size: int) -> dict[str, str]:
    return {name: (unit * (size // len(unit) + 1))[:size] for name, unit in _UNITS.items()}


def child(sizes: list[int], repeat: int) -> dict[str, float]:
    """Runs in the child: margin comes from the tree on PYTHONPATH."""
    from margin.guard import InjectionDetector

    started = time.process_time()
    detector = InjectionDetector()
    timings = {"startup_cpu_s": time.process_time() - started}
    for size in sizes:
        for name, text in inputs(size).items():
            best = float("inf")
            for _ in range(repeat):
                t0 = time.process_time()
                detector.check(text)
                best = min(best, time.process_time() - t0)
            timings[f"{name}@{size}"] = best
    return {key: round(value, 6) for key, value in timings.items()}


def summary(runs: list[dict[str, float]], sizes: list[int]) -> dict[str, Any]:
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    out: dict[str, Any] = {"startup_cpu_s": round(medians["startup_cpu_s"], 3)}
    for name in _UNITS:
        small, large = medians[f"{name}@{sizes[0]}"], medians[f"{name}@{sizes[-1]}"]
        out[name] = {
            "us_per_kb": round(large / sizes[-1] * 1e9, 1),
            "ratio_largest_to_smallest": round(large / small, 2) if small else None,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="the old tree's src folder (required)")
    parser.add_argument("--after", default=str(Path(__file__).resolve().parents[1] / "src"))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sizes", default="50000,200000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="guard_evasion_ab.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    if args.child:
        print(json.dumps(child(sizes, args.repeat)))
        return
    if not args.before:
        parser.error("--before is required")
    path, load_before = ab_trees.result_path(args.out), os.getloadavg()
    options = ["--sizes", ",".join(map(str, sizes)), "--repeat", str(args.repeat)]
    trees = {"before": args.before, "after": args.after}
    rounds = ab_trees.alternate(trees, args.rounds, lambda src: ab_trees.run_child(__file__, src, options))
    summaries = {tree: summary(runs, sizes) for tree, runs in rounds.items()}
    fields = {
        "clock": "time.process_time (CPU time of the child process)",
        "sizes": sizes,
        "repeat": args.repeat,
        "summary": summaries,
    }
    ab_trees.write(path, "guard_evasion_ab", load_before, fields, rounds)
    print(json.dumps(summaries, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
