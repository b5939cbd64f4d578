"""What observability costs a request: `Metrics.observe(row)` (Prometheus metrics, one process and the
multiprocess files several workers use), the trace queue's `record(row)`, a stream's deadline bookkeeping
per read of its upstream (`waiting` + `received`), one publish of a batch of rows (the once-a-second
refresh) and one `/metrics` render, measured in this process (the multiprocess case in a child process with
PROMETHEUS_MULTIPROC_DIR set, as a worker runs). For comparison, `direct_prometheus_us`: the same row fed
straight into prometheus-client (one locked `inc`/`observe` per family, what `observe` did at first).

    python benchmarks/telemetry_cost.py [--rows 50000] [--rounds 5]

Rows cycle over 4 models × 3 statuses, as in a busy gateway. Writes benchmarks/results/telemetry_cost.json:
µs per call (median of the rounds, and each round), with the load average around the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def rows(n: int) -> list[dict[str, Any]]:
    models, statuses = ["gpt-4o-mini", "llama-8b", "local", "claude"], [("ok", 200), ("fallback", 200), ("error", 429)]
    out = []
    for i in range(n):
        status, code = statuses[i % 3]
        out.append(
            {
                "request_id": f"r{i}", "created_at": datetime.now(UTC), "endpoint": "chat.completions",
                "model": models[i % 4], "requested_model": models[i % 4], "backend": f"b{i % 4}", "team": "t",
                "status": status, "http_status": code, "error_code": "budget_exceeded" if code == 429 else None,
                "stream": i % 2 == 0, "input_tokens": 120, "output_tokens": 40, "cached_tokens": 0,
                "ttft_ms": 35.0 if i % 2 == 0 else None, "e2e_ms": 180.0, "overhead_ms": 0.3,
                "cost_nanousd": 42_000, "energy_j": 3.2, "co2e_g": 0.0004, "cache": "exact" if i % 10 == 0 else None,
            }
        )  # fmt: skip
    return out


def per_call_us(call: Callable[[dict[str, Any]], None], data: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    for row in data:
        call(row)
    return (time.perf_counter() - started) / len(data) * 1e6


def measure_observe(n: int, rounds: int) -> list[float]:
    from margin.telemetry.metrics import Metrics

    data = rows(n)
    metrics = Metrics(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    per_call_us(metrics.observe, data[:1000])  # warm the label children
    return [round(per_call_us(metrics.observe, data), 3) for _ in range(rounds)]


def measure_direct(n: int, rounds: int) -> list[float]:
    from margin.telemetry.metrics import Metrics

    f = Metrics().families

    def observe(row: dict[str, Any]) -> None:
        model = row["model"]
        f.requests.labels(model, row["backend"], row["status"], str(row["http_status"])).inc()
        f.e2e.labels(model).observe(row["e2e_ms"] / 1000)
        if row["ttft_ms"] is not None:
            f.ttft.labels(model).observe(row["ttft_ms"] / 1000)
        f.overhead.observe(row["overhead_ms"] / 1000)
        for kind, key in (("input", "input_tokens"), ("output", "output_tokens"), ("cached", "cached_tokens")):
            if row[key]:
                f.tokens.labels(model, kind).inc(row[key])
        f.cost.labels(model).inc(row["cost_nanousd"])
        f.energy.labels(model).inc(row["energy_j"])
        f.co2e.labels(model).inc(row["co2e_g"])

    data = rows(n)
    return [round(per_call_us(observe, data), 3) for _ in range(rounds)]


def measure_record(n: int, rounds: int) -> list[float]:
    from margin.config import TelemetryConfig
    from margin.telemetry.traces import Traces

    data = rows(n)
    results = []
    for _ in range(rounds):
        traces = Traces(TelemetryConfig(otlp_endpoint="http://127.0.0.1:9/v1/traces", trace_queue=n + 1), {})
        results.append(round(per_call_us(traces.record, data), 3))  # the request path's share only
        traces.close()
    return results


def measure_deadline(n: int, rounds: int) -> list[float]:
    from margin.backends.deadline import StreamDeadline

    async def run() -> float:
        deadline = StreamDeadline(
            asyncio.get_running_loop().time(), first_token_s=60, idle_s=30, total_s=600, expire=lambda _: None
        )
        started = time.perf_counter()
        for _ in range(n):  # what a stream pays per read of its upstream
            deadline.waiting()
            deadline.received(event=True)
        deadline.cancel()
        return (time.perf_counter() - started) / n * 1e6

    return [round(asyncio.run(run()), 4) for _ in range(rounds)]


def measure_render(n: int) -> dict[str, float]:
    from margin.telemetry.metrics import Metrics

    metrics = Metrics()
    for row in rows(n):
        metrics.observe(row)
    started = time.perf_counter()
    metrics.publish()  # what the once-a-second refresh does with a second's requests (here: all of them)
    published = time.perf_counter()
    body = metrics.render()
    return {
        "publish_ms": round((published - started) * 1000, 3),
        "render_ms": round((time.perf_counter() - published) * 1000, 3),
        "bytes": len(body),
    }


def child_multiprocess(n: int, rounds: int) -> list[float]:
    with tempfile.TemporaryDirectory() as directory:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        command = [sys.executable, __file__, "--child-observe", "--rows", str(n), "--rounds", str(rounds)]
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True, cwd=ROOT).stdout
        return list(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child-observe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_observe:
        print(json.dumps(measure_observe(args.rows, args.rounds)))
        return
    load_before = os.getloadavg()
    observe = measure_observe(args.rows, args.rounds)
    observe_mp = child_multiprocess(args.rows, args.rounds)
    direct = measure_direct(args.rows, args.rounds)
    record = measure_record(args.rows, args.rounds)
    tick = measure_deadline(args.rows * 10, args.rounds)
    render = measure_render(args.rows)
    result = {
        "what": "µs per call on the request path (median of rounds); metrics_render: publishing all rows' "
        "additions (12 series) and rendering one /metrics body",
        "rows_per_round": args.rows,
        "observe_us": {"median": statistics.median(observe), "rounds": observe},
        "observe_multiprocess_us": {"median": statistics.median(observe_mp), "rounds": observe_mp},
        "direct_prometheus_us": {"median": statistics.median(direct), "rounds": direct},
        "trace_record_us": {"median": statistics.median(record), "rounds": record},
        "stream_deadline_per_read_us": {"median": statistics.median(tick), "rounds": tick},
        "metrics_render": render,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "command": "python benchmarks/telemetry_cost.py " + f"--rows {args.rows} --rounds {args.rounds}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "telemetry_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
