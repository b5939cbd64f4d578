"""Gateway overhead: a fake OpenAI upstream (its own process, instant reply) called directly and through
`margin serve` (ledger on, one worker) at a fixed open-loop rate, in alternating rounds in one run.

    python benchmarks/overhead.py [--rate 200] [--seconds 10] [--rounds 3]

Writes benchmarks/results/overhead.json with `direct` and `margin` (p50_ms, p99_ms, achieved_rps, errors)
and the added latency. The client runs in this process; the upstream and margin in their own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import Result, open_loop, session

RESULTS = Path(__file__).resolve().parent / "results"
BODY = orjson.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "Say hello to the benchmark."}], "max_tokens": 16}
)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url} exited early")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not start")


def start_upstream(port: int, tokens: int = 16) -> subprocess.Popen[bytes]:
    here = Path(__file__).resolve().parent
    process = subprocess.Popen(
        [sys.executable, str(here / "fake_upstream.py"), "--port", str(port), "--tokens", str(tokens)]
    )
    wait_ready(f"http://127.0.0.1:{port}/", process)
    return process


def start_bare_proxy(port: int, upstream_port: int) -> subprocess.Popen[bytes]:
    here = Path(__file__).resolve().parent
    process = subprocess.Popen(
        [
            sys.executable,
            str(here / "bare_proxy.py"),
            "--port",
            str(port),
            "--upstream",
            f"http://127.0.0.1:{upstream_port}",
        ]
    )
    wait_ready(f"http://127.0.0.1:{port}/", process)
    return process


def margin_config(workdir: Path, upstream_port: int) -> Path:
    config = workdir / "margin.yaml"
    config.write_text(
        f"server: {{log_level: warning}}\nstorage: {{ledger: 'sqlite:///{workdir / 'ledger.db'}'}}\n"
        "backends:\n"
        f"  up: {{kind: openai, base_url: 'http://127.0.0.1:{upstream_port}/v1'}}\n"
        "models:\n"
        "  bench: {backend: up, upstream_model: fake-upstream, price: {input: '0.15', output: '0.60'}}\n"
    )
    return config


def start_margin(config: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "margin", "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    wait_ready(f"http://127.0.0.1:{port}/healthz", process)
    return process


def merge(results: list[Result]) -> Result:
    latencies = [x for r in results for x in r.latencies_ms]
    return Result(
        results[0].offered_rps,
        sum(r.duration_s for r in results),
        latencies,
        sum(r.errors for r in results),
        sum(r.late_starts for r in results),
    )


async def measure(urls: dict[str, str], rate: float, seconds: float, rounds: int) -> dict[str, Result]:
    runs: dict[str, list[Result]] = {name: [] for name in urls}
    clients = {name: session(url) for name, url in urls.items()}
    try:
        for name, client in clients.items():  # warm-up: connections, caches, first-call imports
            await open_loop(client, "/v1/chat/completions", BODY, rate, 2.0)
            print(f"warmed up {name}", flush=True)
        for round_ in range(rounds):
            for name, client in clients.items():
                result = await open_loop(client, "/v1/chat/completions", BODY, rate, seconds, seed=round_)
                runs[name].append(result)
                print(f"round {round_ + 1} {name}: {result.summary()}", flush=True)
    finally:
        for client in clients.values():
            await client.close()
    return {name: merge(results) for name, results in runs.items()}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("margin", "uvicorn", "starlette", "httpx", "sqlalchemy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "overhead.json")
    args = parser.parse_args()
    upstream_port, margin_port, bare_port = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        upstream = start_upstream(upstream_port)
        margin = start_margin(margin_config(Path(tmp), upstream_port), margin_port)
        bare = start_bare_proxy(bare_port, upstream_port)
        try:
            urls = {
                "direct": f"http://127.0.0.1:{upstream_port}",
                "margin": f"http://127.0.0.1:{margin_port}",
                "bare_proxy": f"http://127.0.0.1:{bare_port}",
            }
            merged = uvloop.run(measure(urls, args.rate, args.seconds, args.rounds))
            ledger_rows = json.loads(
                subprocess.run(
                    [sys.executable, "-m", "margin", "report", "--config", str(Path(tmp) / "margin.yaml"), "--json"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )["totals"]["requests"]
        finally:
            for process in (bare, margin, upstream):
                process.terminate()
                process.wait(timeout=30)
    direct, through, bare_proxy = (merged[name].summary() for name in ("direct", "margin", "bare_proxy"))
    result: dict[str, Any] = {
        "benchmark": "overhead",
        "what": "fake upstream (instant, 16 tokens) direct vs through margin (ledger on, one worker)",
        "rate_rps": args.rate,
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "direct": direct,
        "margin": through,
        "bare_proxy": bare_proxy,
        "added_p50_ms": round(through["p50_ms"] - direct["p50_ms"], 4),
        "added_p99_ms": round(through["p99_ms"] - direct["p99_ms"], 4),
        "bare_proxy_added_p50_ms": round(bare_proxy["p50_ms"] - direct["p50_ms"], 4),
        "bare_proxy_added_p99_ms": round(bare_proxy["p99_ms"] - direct["p99_ms"], 4),
        "targets": {"added_p50_ms": 0.5, "added_p99_ms": 2.0},
        "ledger_rows_written": ledger_rows,
        "hardware": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "versions": versions(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if "added" in k or k == "ledger_rows_written"}))


if __name__ == "__main__":
    main()
