"""A Responses stream's pieces joined once against concatenated piece by piece: the CPU time
`StreamEvents.chunk` spends on `n` deltas of 10 characters of OpenRouter `reasoning_details` (and of a call's
arguments), old tree against new, in separate processes, in turn.

    python benchmarks/stream_pieces_ab.py --before OLD_SRC [--after NEW_SRC] [--rounds 3] [--sizes 20000,80000]
        [--out stream_pieces_ab.json]

Each round runs one child process per tree and size, before then after, with its tree first on PYTHONPATH; a
child reports `time.process_time()` for the deltas and the stream's end. Writes benchmarks/results/OUT with every
round and the medians; an existing file is kept.
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


def child(size: int) -> dict[str, float]:
    """Runs in the child: margin comes from the tree on PYTHONPATH."""
    from margin.api.responses_out import StreamEvents, skeleton
    from margin.responses import parse_responses

    body = parse_responses({"model": "m", "input": "x"})
    piece = {"type": "reasoning.text", "index": 0, "text": "abcdefghij"}
    details = {"choices": [{"index": 0, "delta": {"reasoning_content": "abcdefghij", "reasoning_details": [piece]}}]}
    call = {"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": "[1,2,3,4,5"}}
    arguments = {"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}
    timings = {}
    for name, chunk in (("reasoning_details", details), ("arguments", arguments)):
        events = StreamEvents(skeleton(body, "resp_1"), "1")
        events.start()
        started = time.process_time()
        for _ in range(size):
            events.chunk(chunk)
        events.end()
        timings[f"{name}_cpu_s"] = round(time.process_time() - started, 4)
    return timings


def run_child(src: str, size: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": src}
    command = [sys.executable, __file__, "--child", "--sizes", str(size)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=600)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="the old tree's src folder")
    parser.add_argument("--after", default=str(Path(__file__).resolve().parents[1] / "src"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="20000,80000")
    parser.add_argument("--out", default="stream_pieces_ab.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.child:
        print(json.dumps(child(sizes[0])))
        return
    path = RESULTS / args.out
    if path.exists():
        raise SystemExit(f"{path} exists: name a new file with --out")
    load_before = os.getloadavg()
    rounds: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        for tree, src in (("before", args.before), ("after", args.after)):
            run: dict[str, float] = {}
            for size in sizes:
                run.update({f"{size}.{key}": value for key, value in run_child(src, size).items()})
            rounds[tree].append(run)
    medians = {tree: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for tree, runs in rounds.items()}
    result: dict[str, Any] = {
        "benchmark": "stream_pieces_ab",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "sizes": sizes,
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
