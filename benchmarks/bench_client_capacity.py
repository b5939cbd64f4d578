"""Is `margin bench` itself ever the bottleneck? Drive an instant fake upstream (`fake_upstream.py`, its own
process, every answer a 32-chunk SSE stream sent at once) at rising open-loop rates and record what the
client spends: CPU seconds per request, its share of one core, event-loop lag, late starts (requests that
left > 5 ms after their slot) and achieved vs offered rate.

    python benchmarks/bench_client_capacity.py [--rates 25,50,100,200] [--seconds 5] [--tokens 32]

Writes results/bench_client_capacity.json. Real model servers here stream ~30-200 tokens/s, i.e. well under
one request per second per stream; the client's capacity measured here is far above that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from margin.bench import loadgen
from margin.bench.prompts import PromptSpec
from margin.bench.runner import BenchConfig, hardware, run_bench

HERE = Path(__file__).resolve().parent


def start_upstream(port: int, tokens: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(HERE / "fake_upstream.py"), "--port", str(port), "--tokens", str(tokens)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("fake upstream did not start")


def point(run: dict[str, Any]) -> dict[str, Any]:
    m, c = run["metrics"], run["client"]
    return {
        "offered_rps": run["load"]["rate"],
        "achieved_rps": m["request_throughput"],
        "requests": m["requests"],
        "failed": m["failed"],
        "chunks_per_s": round(sum(len(r["chunk_s"]) for r in run["requests"]) / m["duration_s"], 1),
        "client_cpu_ms_per_request": c["cpu_ms_per_request"],
        "client_cpu_share_of_one_core": c["cpu_share_of_one_core"],
        "loop_lag_ms": c["loop_lag_ms"],
        "late_starts": c["late_starts"],
        "late_start_pct": round(100 * c["late_starts"] / max(1, m["requests"]), 2),
        "ttft_ms_p50": m["ttft_ms"]["p50"],
        "e2el_ms_p99": m["e2el_ms"]["p99"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="25,50,100,200")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--port", type=int, default=9241)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_client_capacity.json")
    args = parser.parse_args()
    upstream = start_upstream(args.port, args.tokens)
    try:
        shapes = [loadgen.LoadShape(rate=float(r), duration_s=args.seconds, seed=1) for r in args.rates.split(",")]
        config = BenchConfig(
            target=loadgen.Target(f"http://127.0.0.1:{args.port}/v1", "fake"),
            shapes=shapes,
            prompts=PromptSpec("random", 100, 1, 64, args.tokens),
            warmup=20,
            meter="none",
        )
        result = asyncio.run(run_bench(config))
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)
    points = [point(run) for run in result["runs"]]
    for p in points:
        print(json.dumps(p))
    out = {
        "what": "margin bench's own cost per request against an instant fake upstream (same host, 2 processes)",
        "tokens_per_response": args.tokens,
        "seconds_per_rate": args.seconds,
        "hardware": hardware(True),
        "versions": result["versions"],
        "points": points,
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
