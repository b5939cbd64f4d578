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
import time
from pathlib import Path

import ab_trees

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
    path, load_before = ab_trees.result_path(args.out), os.getloadavg()
    here = [str(Path(__file__).resolve().parent)]  # the child imports guard_scaling's inputs
    options = ["--size", str(args.size), "--repeat", str(args.repeat)]
    trees = {"before": args.before, "after": args.after}
    rounds = ab_trees.alternate(trees, args.rounds, lambda src: ab_trees.run_child(__file__, src, options, here))
    medians = ab_trees.medians(rounds)
    fields = {"size": args.size, "repeat": args.repeat, "medians": medians}
    ab_trees.write(path, "guard_fold_ab", load_before, fields, rounds)
    print(json.dumps(medians, indent=1))


if __name__ == "__main__":
    main()
