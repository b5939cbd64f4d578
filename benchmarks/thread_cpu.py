"""Where a live gateway's CPU goes, by thread and child process: the gateway sweep's servers (`sweep_servers`),
one fixed open-loop rate per path in turn, each process's threads read from /proc before and after (Linux).

    python benchmarks/thread_cpu.py [--mode json|sse] [--rate 500] [--seconds 10] [--rotations 2]
                                    [--paths bare,margin] [--out results/thread_cpu.json]
                                    [--paths margin,margin_before --margin-before-src OLD/src]   # A/B

The gateway sweep reports a path's CPU per request as one number (process and children); this splits it into
the event-loop thread, the ledger's ingest child, the database threads and whatever else runs, so a gap
between two paths can be placed before it is profiled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fastload import open_loop
from gateway_sweep import requests_for
from overhead import free_port, start_upstream
from sweep_servers import CLOCK, Servers

HERE = Path(__file__).resolve().parent


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def thread_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of `pid` and its descendants, keyed `process/thread name`."""
    seconds: dict[str, float] = {}
    for process in descendants(pid):
        role = "main" if process == pid else f"child {process}"
        try:
            threads = os.listdir(f"/proc/{process}/task")
        except OSError:
            continue
        for thread in threads:
            try:
                stat = Path(f"/proc/{process}/task/{thread}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            kind = "event loop" if thread == str(process) else f"thread {thread}"
            seconds[f"{role}: {kind}"] = (int(fields[11]) + int(fields[12])) / CLOCK
    return seconds


def measure(servers: Servers, name: str, mode: str, rate: float, seconds: float) -> dict[str, Any]:
    port, pid = servers.port(name), servers.pid(name)
    assert pid is not None
    cycle = requests_for(port, mode, servers.auth(name))
    uvloop.run(open_loop("127.0.0.1", port, cycle, rate, 2.0))  # warm-up
    time.sleep(2.0)
    before = thread_seconds(pid)
    outcome = uvloop.run(open_loop("127.0.0.1", port, cycle, rate, seconds))
    after = thread_seconds(pid)
    latencies = sorted(x for values in outcome.latencies_ms.values() for x in values)
    done = len(latencies)
    used = {key: after[key] - before.get(key, 0.0) for key in after}
    per_request = {key: round(1e6 * s / done, 1) for key, s in sorted(used.items(), key=lambda kv: -kv[1]) if s > 0}
    return {
        "path": name,
        "completed": done,
        "errors": outcome.errors,
        "p50_ms": round(latencies[done // 2], 3) if done else None,
        "cpu_us_per_request": per_request,
        "total_cpu_us_per_request": round(sum(per_request.values()), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("json", "sse"), default="json")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rotations", type=int, default=2)
    parser.add_argument("--paths", default="bare,margin")
    parser.add_argument("--margin-before-src", type=Path, default=None, help="the margin_before path's src/")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "thread_cpu.json")
    args = parser.parse_args()
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    runs = []
    with tempfile.TemporaryDirectory() as tmp, Servers(Path(tmp), free_port) as servers:
        servers.start(paths, start_upstream, args.margin_before_src)
        for _ in range(args.rotations):
            for name in paths:
                run = measure(servers, name, args.mode, args.rate, args.seconds)
                print(json.dumps(run))
                runs.append(run)
    result = {"mode": args.mode, "rate": args.rate, "seconds": args.seconds, "runs": runs, "load": os.getloadavg()}
    result["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
