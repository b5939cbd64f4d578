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
import time
from pathlib import Path
from typing import Any

import ab_trees


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
    path, load_before = ab_trees.result_path(args.out), os.getloadavg()

    def run(src: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for size in sizes:
            measured = ab_trees.run_child(__file__, src, ["--sizes", str(size)])
            out.update({f"{size}.{key}": value for key, value in measured.items()})
        return out

    rounds = ab_trees.alternate({"before": args.before, "after": args.after}, args.rounds, run)
    medians = ab_trees.medians(rounds)
    ab_trees.write(path, "stream_pieces_ab", load_before, {"sizes": sizes, "medians": medians}, rounds)
    print(json.dumps(medians, indent=1))


if __name__ == "__main__":
    main()
