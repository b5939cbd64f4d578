"""Soak: `margin serve` (an API key, a global budget and a rate limit, the SQLite ledger; one worker) in
front of the fake upstream, under open-loop load for `--requests` requests (default
1,000,000; half JSON, half SSE), with the gateway's resident memory (RSS, the process and its children)
sampled every `--every` requests (default 10,000). Memory may grow while caches and pools warm up; after
that (`--warmup` share of the run, default 10 %) it should stay flat: growth ≤ 10 % is the target.

    python benchmarks/soak.py [--requests 1000000] [--rate 500] [--every 10000] [--server uvicorn|granian]

Writes benchmarks/results/soak.json: the samples (requests done, RSS MB, p50/p99 ms and errors of the
block), the growth after warm-up, the ledger's row count at the end, and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep_summary as summary
from fastload import build_request, open_loop
from gateway_sweep import ledger_rows
from overhead import free_port, start_upstream
from sweep_servers import Servers

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PROMPT = [{"role": "user", "content": "Say hello to the benchmark."}]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (Linux /proc), in MB."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
        todo.extend(children.get(current, []))
    return round(total / 1024, 1)


def cycle(port: int, key: str) -> list[tuple[str, bytes]]:
    headers = {"Authorization": f"Bearer {key}"}
    whole = orjson.dumps({"model": "bench", "messages": PROMPT, "max_tokens": 16})
    streamed = orjson.dumps({"model": "bench", "messages": PROMPT, "max_tokens": 16, "stream": True})
    return [
        ("json", build_request("127.0.0.1", port, "/v1/chat/completions", whole, headers)),
        ("sse", build_request("127.0.0.1", port, "/v1/chat/completions", streamed, headers)),
    ]


def growth_after_warmup(samples: list[dict[str, Any]], warmup_share: float) -> float | None:
    """RSS growth from the first sample past the warm-up to the last, in % of the former."""
    if not samples:
        return None
    total = samples[-1]["requests"]
    after = [s for s in samples if s["requests"] >= warmup_share * total]
    if len(after) < 2:
        return None
    growth: float = 100 * (after[-1]["rss_mb"] - after[0]["rss_mb"]) / after[0]["rss_mb"]
    return round(growth, 2)


def soak(servers: Servers, args: argparse.Namespace) -> list[dict[str, Any]]:
    pid = servers.pid("margin")
    assert pid is not None
    requests = cycle(servers.port("margin"), servers.keys["margin"])
    samples: list[dict[str, Any]] = [{"requests": 0, "rss_mb": rss_mb(pid), "elapsed_s": 0.0}]
    started = time.perf_counter()
    done = 0
    while done < args.requests:
        block = min(args.every, args.requests - done)
        outcome = uvloop.run(open_loop("127.0.0.1", servers.port("margin"), requests, args.rate, block / args.rate))
        done += block
        entry = summary.rate_entry(args.rate, block / args.rate, outcome.latencies_ms, outcome.errors)
        samples.append(
            {
                "requests": done,
                "rss_mb": rss_mb(pid),
                "elapsed_s": round(time.perf_counter() - started, 1),
                "p50_ms": entry["p50_ms"],
                "p99_ms": entry["p99_ms"],
                "errors": entry["errors"],
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
        )
        print(json.dumps(samples[-1]), flush=True)
        if servers.exit_code("margin") is not None:
            samples[-1]["server_exited"] = servers.exit_code("margin")
            break
    return samples


def settled_rows(path: Path, limit_s: float = 60.0) -> int | None:
    """The ledger's row count once it stops growing (the writer drains its queue after the load stops)."""
    rows, deadline = ledger_rows(path), time.monotonic() + limit_s
    while time.monotonic() < deadline:
        time.sleep(2.0)
        now = ledger_rows(path)
        if now == rows:
            break
        rows = now
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--warmup", type=float, default=0.1, help="share of the run before growth is measured")
    parser.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Servers(Path(tmp), free_port, args.server) as servers:
        servers.start(["margin"], start_upstream)
        samples = soak(servers, args)
        rows = settled_rows(Path(tmp) / "margin" / "ledger.db")
    growth = growth_after_warmup(samples, args.warmup)
    result = {
        "benchmark": "soak",
        "what": "margin (key, budget, rate limit, SQLite ledger) in front of the fake upstream; half JSON, half SSE",
        "requests": samples[-1]["requests"],
        "rate_rps": args.rate,
        "every": args.every,
        "warmup_share": args.warmup,
        "rss_growth_after_warmup_pct": growth,
        "target": {"rss_growth_after_warmup_pct_at_most": 10.0, "met": None if growth is None else growth <= 10.0},
        "errors": sum(s.get("errors", 0) for s in samples),
        "ledger_rows": rows,
        "samples": samples,
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("requests", "rss_growth_after_warmup_pct", "errors", "ledger_rows")}))


if __name__ == "__main__":
    main()
