"""Where `margin serve`'s CPU goes, per thread and child process, under the gateway sweep's traffic.

    python benchmarks/cpu_by_thread.py [--rate 500] [--seconds 15] [--mode json|sse]

The sweep's fake upstream and margin (its config: a key, a budget, a rate limit, the SQLite ledger), an
open-loop client at `--rate` for `--seconds` after a 3 s warm-up; the CPU time of each thread of the
gateway and of its children (the ledger's ingest child) from /proc, before and after, per request. The
gateway's main thread runs the event loop; its other threads are the ledger's ingester (files, offsets) and
the pools' helpers.
Writes benchmarks/results/cpu_by_thread_<mode>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gateway_sweep as sweep
from overhead import free_port, start_upstream
from sweep_servers import CLOCK, Servers

RESULTS = Path(__file__).resolve().parent / "results"


def _seconds(stat: str) -> float:
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK


def _children(pid: int) -> list[int]:
    out = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            out.append(int(entry))
    return out


def threads(pid: int, role: str = "gateway") -> dict[str, tuple[str, float]]:
    """CPU seconds of every thread of `pid` and of its descendants: {"pid/tid": (role, seconds)}."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[f"{pid}/{tid}"] = (role, _seconds(Path(f"/proc/{pid}/task/{tid}/stat").read_text()))
        except OSError:
            continue
    for child in _children(pid):
        out.update(threads(child, "child"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--mode", choices=("json", "sse"), default="json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Servers(Path(tmp), free_port) as servers:
        servers.start(["margin"], start_upstream)
        pid, port = servers.pid("margin"), servers.port("margin")
        assert pid is not None
        cycle = sweep.requests_for(port, args.mode, servers.keys["margin"])
        sweep.run_one(port, cycle, args.rate, 3)  # warm-up
        time.sleep(2)
        children = _children(pid)
        before = threads(pid)
        outcome = sweep.run_one(port, cycle, args.rate, args.seconds)
        after = threads(pid)
    requests = sum(len(v) for v in outcome.latencies_ms.values())
    rows: list[dict[str, Any]] = []
    for key, (role, seconds) in sorted(after.items()):
        process, tid = (int(part) for part in key.split("/"))
        used = seconds - before.get(key, (role, 0.0))[1]
        if process in children:
            name = "ingest child"
        else:
            name = "main thread (event loop)" if tid == process else f"other thread {tid}"
        rows.append(
            {"process": process, "thread": tid, "name": name, "us_per_request": round(used * 1e6 / requests, 1)}
        )
    result: dict[str, Any] = {
        "benchmark": "cpu_by_thread",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "rate": args.rate,
        "seconds": args.seconds,
        "mode": args.mode,
        "requests": requests,
        "errors": outcome.errors,
        "threads": [row for row in rows if row["us_per_request"] > 0],
        "total_us_per_request": round(sum(row["us_per_request"] for row in rows), 1),
    }
    for row in result["threads"]:
        print(f"{row['process']}/{row['thread']:<8} {row['name']:<40} {row['us_per_request']:8.1f} µs a request")
    print(f"total {result['total_us_per_request']} µs a request ({requests} requests)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"cpu_by_thread_{args.mode}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
