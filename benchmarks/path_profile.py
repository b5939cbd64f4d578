"""Where the gateway's CPU goes per request, in place: the sweep's traffic (fake upstream, one worker, margin
with its key, budget, rate limit and SQLite ledger) against the bare proxy and margin in turn, with py-spy
sampling the gateway (blocking mode: each sample stops the process, so stacks are whole). The event loop's
thread's samples are split along the request's path: each sample goes to the deepest step of the path its
stack is in, so the parts add up to the whole; a part's CPU per request is its share of that thread's samples
times the thread's CPU per request (from /proc, measured over the same run). The other threads and the ingest
child are reported from /proc alone.

    python benchmarks/path_profile.py [--mode json|sse] [--rate 500] [--seconds 12] [--hz 200]

Needs py-spy (the `bench` extra) and the right to trace a child process. Sampling costs the gateway time,
so the totals are above the sweep's; compare the two paths, and the parts, within one run.
Writes benchmarks/results/path_profile_<mode>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_sweep as sweep
from cpu_by_thread import threads
from overhead import free_port, start_upstream
from sweep_servers import Servers

RESULTS = Path(__file__).resolve().parent / "results"
# each path's steps, outermost first: a sample belongs to the deepest one on its stack
STEPS = {
    "bare": [("app", "make_app.<locals>.app"), ("upstream HTTP client (aiohttp)", "ClientSession._request")],
    "margin": [
        ("edge, body, parse, auth header, request id", "Gateway.__call__"),
        ("flow: the answer to the client", "Flow.__call__"),
        ("settle: row, outbox write, settle, metrics", "Settle.__call__"),
        ("auth", "Auth.__call__"),
        ("route", "Route.__call__"),
        ("admit", "Admit.__call__"),
        ("guard", "Guard.__call__"),
        ("cache", "Cache.__call__"),
        ("backend adapter: call, timeouts, read, meter", "BackendCall.__call__"),
        ("upstream HTTP client (aiohttp)", "ClientSession._request"),
    ],
}
OUTSIDE = "server, parser and event loop (outside the app)"


def split(raw: str, steps: list[tuple[str, str]], pid: int) -> tuple[int, Counter[str]]:
    """Samples of the process's main thread (py-spy --threads: a stack's first frame is `thread (<tid>)...`,
    and the main thread's id is the process's), by step."""
    parts: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack.startswith(f"thread ({pid})"):
            continue
        frames = [frame.split(" (")[0] for frame in stack.split(";")]
        total += int(count)
        part = OUTSIDE
        for name, function in steps:
            if function in frames:
                part = name
        parts[part] += int(count)
    return total, parts


def profile(servers: Servers, path: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    pid, port = servers.pid(path), servers.port(path)
    assert pid is not None
    cycle = sweep.requests_for(port, args.mode, servers.auth(path))
    sweep.run_one(port, cycle, args.rate, 3)  # warm-up
    time.sleep(1)
    spy = [shutil.which("py-spy") or "py-spy", "record", "--pid", str(pid), "--rate", str(args.hz), "--threads"]
    spy += ["--format", "raw", "--duration", str(int(args.seconds) + 2), "-o", str(out)]
    sampler = subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    before = threads(pid)
    outcome = sweep.run_one(port, cycle, args.rate, args.seconds)
    after = threads(pid)
    sampler.wait(timeout=60)
    requests = sum(len(v) for v in outcome.latencies_ms.values())
    used = {key: (role, seconds - before.get(key, (role, 0.0))[1]) for key, (role, seconds) in after.items()}
    main_key = f"{pid}/{pid}"
    main_us = used[main_key][1] * 1e6 / requests
    others = sum(s for key, (role, s) in used.items() if role == "gateway" and key != main_key) * 1e6 / requests
    children = sum(s for role, s in used.values() if role == "child") * 1e6 / requests
    total, parts = split(out.read_text(), STEPS[path], pid)
    return {
        "requests": requests,
        "errors": outcome.errors,
        "cpu_us_per_request": {
            "event_loop_thread": round(main_us, 1),
            "other_threads": round(others, 1),
            "children": round(children, 1),
        },
        "event_loop_samples": total,
        "event_loop_parts_us_per_request": {
            name: round(main_us * count / total, 1) for name, count in parts.most_common()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("json", "sse"), default="json")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--hz", type=int, default=200)
    args = parser.parse_args()
    result: dict[str, Any] = {
        "benchmark": "path_profile",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": args.mode,
        "rate": args.rate,
        "seconds": args.seconds,
        "sampling_hz": args.hz,
        "paths": {},
    }
    with tempfile.TemporaryDirectory() as tmp, Servers(Path(tmp), free_port) as servers:
        servers.start(["bare", "margin"], start_upstream)
        for path in ("bare", "margin"):
            result["paths"][path] = found = profile(servers, path, args, Path(tmp) / f"{path}.txt")
            print(path, json.dumps(found, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"path_profile_{args.mode}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
