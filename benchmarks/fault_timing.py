"""How long each fault takes to end, against the limits that should end it: `margin serve` in front of the
fault upstream (`tests/fault_upstream.py`, its own process), one backend per case, no fallback, the client
timing each request from send to its last byte.

    python benchmarks/fault_timing.py [--repeat 5]

Limits of every faulty backend: connect 1 s, first event 1 s, idle 0.5 s, total 2 s; retries 2 (backoff
0.01–0.05 s, Retry-After up to 1 s). Writes benchmarks/results/fault_timing.json: per case the outcome, the
limit expected to end it, and the client's time (median, max) over the repeats, next to a healthy upstream.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LIMITS = {"connect_timeout_s": 1, "first_token_timeout_s": 1, "idle_timeout_s": 0.5, "timeout_s": 2}
RETRIES = {"attempts": 2, "backoff_s": 0.01, "backoff_max_s": 0.05, "retry_after_max_s": 1}
# name, fault mode (None: nobody listens), stream, the limit expected to end it
CASES: list[tuple[str, str | None, bool, str]] = [
    ("healthy-json", "ok", False, "-"),
    ("healthy-sse", "ok", True, "-"),
    ("503x3-json", "status,code=503", False, "3 tries, backoff"),
    ("refused-json", None, False, "3 tries, backoff"),
    ("429-retry-after-0.2-once", "status,code=429,after=0.2,times=1", False, "Retry-After 0.2 s"),
    ("slow-first-byte-json", "slow,delay=30", False, "total 2 s"),
    ("slow-first-byte-sse", "slow,delay=30", True, "first event 1 s"),
    ("headers-then-silence-sse", "slowbody,delay=30", True, "first event 1 s"),
    ("stall-mid-stream-sse", "stall,events=2", True, "idle 0.5 s"),
    ("stall-mid-body-json", "stall,events=2", False, "total 2 s"),
    ("reset-mid-stream-sse", "reset,events=2", True, "RST after 0.3 s (server side)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config(upstream: str, workdir: Path, repeat: int) -> dict[str, Any]:
    backends: dict[str, Any] = {}
    models: dict[str, Any] = {}
    dead = free_port()
    for name, mode, _stream, _limit in CASES:
        for run in range(repeat):  # a backend (and upstream path) per run: a fault `times=1` meets each run
            backend = f"{name}-{run}"
            base = f"{upstream}/{mode}/{backend}/v1" if mode else f"http://127.0.0.1:{dead}/v1"
            backends[backend] = {"kind": "openai", "base_url": base, "retries": RETRIES, **LIMITS}
            models[backend] = {"backend": backend, "price": {"input": "1", "output": "1"}}
    return {
        "storage": {"ledger": f"sqlite:///{workdir / 'ledger.db'}", "flush_interval_ms": 10},
        "admission": {"breaker_failures": 1000},  # every repeat meets the fault itself, no open circuit
        "backends": backends,
        "models": models,
    }


def timed(client: httpx.Client, model: str, stream: bool) -> tuple[float, int, str | None]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    started = time.perf_counter()
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        text = response.read().decode()
    elapsed = time.perf_counter() - started
    code = None
    if response.status_code != 200:
        code = json.loads(text)["error"]["code"]
    elif '"error"' in text:
        code = json.loads(next(line[6:] for line in text.splitlines() if '"error"' in line))["error"]["code"]
    return elapsed, response.status_code, code


def start(command: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen(command, cwd=ROOT, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()
    upstream = start([sys.executable, "-m", "tests.fault_upstream"], stdout=subprocess.PIPE, text=True)
    assert upstream.stdout is not None
    upstream_url = f"http://127.0.0.1:{int(upstream.stdout.readline().split()[1])}"
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "margin.yaml").write_text(yaml.safe_dump(config(upstream_url, workdir, args.repeat)))
        port = free_port()
        command = [sys.executable, "-m", "margin", "serve", "--config", str(workdir / "margin.yaml")]
        gateway = start([*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            cases = []
            with httpx.Client(base_url=url, timeout=30) as client:
                for name, _mode, stream, limit in CASES:
                    runs = [timed(client, f"{name}-{run}", stream) for run in range(args.repeat)]
                    times = [round(r[0] * 1000, 1) for r in runs]
                    cases.append(
                        {"case": name, "stream": stream, "ended_by": limit, "status": runs[-1][1],
                         "error_code": runs[-1][2], "ms_median": statistics.median(times), "ms_max": max(times),
                         "ms": times}
                    )  # fmt: skip
                    print(f"{name:28} {runs[-1][1]} {runs[-1][2]!s:24} median {statistics.median(times):8.1f} ms")
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=60)
            upstream.terminate()
            upstream.wait(timeout=10)
            upstream.stdout.close()
    result = {
        "what": "client time from send to the last byte, per fault, no fallback (ms)",
        "limits": LIMITS,
        "retries": RETRIES,
        "repeat": args.repeat,
        "cases": cases,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "command": f"python benchmarks/fault_timing.py --repeat {args.repeat}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fault_timing.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
