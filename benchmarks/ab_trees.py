"""What the benchmarks that time two (or three) source trees in turn share: a child process per tree and round
with that tree first on PYTHONPATH (`run_child`), the rounds alternated (`alternate`), their medians, and the
result file (`result_path` refuses to overwrite one; `write` adds the machine and the load before and after).
The child's own measure is the script's: it prints one JSON object."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
Rounds = dict[str, list[dict[str, Any]]]


def result_path(out: str) -> Path:
    """benchmarks/results/OUT, which must not exist yet (a result is never overwritten)."""
    path = RESULTS / out
    if path.exists():
        raise SystemExit(f"{path} exists: name a new file with --out")
    return path


def run_child(script: str, src: str, args: Sequence[str], path: Sequence[str] = ()) -> dict[str, Any]:
    """`python SCRIPT --child ARGS` with `src` (then `path`) on PYTHONPATH; the JSON object it prints."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, *path])}
    command = [sys.executable, script, "--child", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=600)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def alternate(trees: Mapping[str, str], rounds: int, run: Callable[[str], dict[str, Any]]) -> Rounds:
    """`run(src)` for each tree in turn, `rounds` times: tree name → its runs."""
    out: Rounds = {tree: [] for tree in trees}
    for _ in range(rounds):
        for tree, src in trees.items():
            out[tree].append(run(src))
    return out


def medians(rounds: Rounds, keep: Callable[[str], bool] = lambda _key: True) -> dict[str, dict[str, float]]:
    """Per tree, the median of each measure (`keep`: which keys are measures)."""
    return {
        tree: {key: statistics.median(run[key] for run in runs) for key in runs[0] if keep(key)}
        for tree, runs in rounds.items()
    }


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}


def write(
    path: Path, benchmark: str, load_before: tuple[float, ...], fields: Mapping[str, Any], rounds: Rounds
) -> None:
    """The result file: the benchmark's name, the machine, the load before, `fields`, every round, the load after."""
    result = {
        "benchmark": benchmark,
        **machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        **fields,
        "rounds": rounds,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path}")
