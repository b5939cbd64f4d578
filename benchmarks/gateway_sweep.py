"""Gateway sweep: one fake OpenAI upstream (its own process, instant reply, fixed tokens) reached three ways
in one run: directly; through `margin serve` (ledger, a budget and a rate limit on; one worker); through
LiteLLM's proxy (`litellm[proxy]==1.106.2` in its own virtualenv, one worker, no database). Open-loop rates
(default 100, 250, 500, 1000, 2000 RPS), each path in turn at each rate, the order rotating per rate.

    python benchmarks/gateway_sweep.py [--rates 100,250,500,1000,2000] [--seconds 20] [--paths direct,margin,litellm]

Requests alternate between a whole answer and a stream (`--stream-share`). The client is
benchmarks/fastload.py (raw keep-alive connections + httptools), in this process. Writes
benchmarks/results/gateway_sweep.json (`paths.<path>.rates[]`, `max_sustained_rps`, added latency vs
direct) and gateway_sweep.png. LiteLLM's virtualenv: benchmarks/.venv-litellm (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep_summary as summary
from fastload import Outcome, build_request, open_loop
from overhead import free_port, start_upstream
from sweep_servers import LITELLM_KEY, LITELLM_VENV, Servers, cpu_seconds

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PROMPT = [{"role": "user", "content": "Say hello to the benchmark."}]
PATH = "/v1/chat/completions"


def requests_for(port: int, stream_share: float, auth: str | None) -> list[tuple[str, bytes]]:
    """A cycle of 20 pre-built requests: `stream_share` of them streamed, the others whole answers."""
    headers = {"Authorization": f"Bearer {auth}"} if auth else None
    whole = orjson.dumps({"model": "bench", "messages": PROMPT, "max_tokens": 16})
    streamed = orjson.dumps({"model": "bench", "messages": PROMPT, "max_tokens": 16, "stream": True})
    streams = round(20 * stream_share)
    cycle: list[tuple[str, bytes]] = []
    for i in range(20):
        is_stream = i * streams // 20 != (i + 1) * streams // 20
        body = streamed if is_stream else whole
        cycle.append(("stream" if is_stream else "json", build_request("127.0.0.1", port, PATH, body, headers)))
    return cycle


def run_one(port: int, cycle: list[tuple[str, bytes]], rate: float, seconds: float) -> Outcome:
    return uvloop.run(open_loop("127.0.0.1", port, cycle, rate, seconds))


def wait_quiet(pids: list[int], idle_share: float = 0.05, limit_s: float = 60.0) -> float:
    """Wait until the servers are idle (under `idle_share` of a core each over half a second), so that a
    backlog left by a collapsed run does not spill into the next one; returns the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        before = [cpu_seconds(pid) for pid in pids]
        time.sleep(0.5)
        if all(cpu_seconds(pid) - used < idle_share * 0.5 for pid, used in zip(pids, before, strict=True)):
            break
    return round(time.perf_counter() - started, 1)


def measure(servers: Servers, name: str, rate: float, seconds: float, cycle: list[tuple[str, bytes]]) -> dict[str, Any]:
    pids = {"gateway": servers.pid(name), "upstream": servers.pid("direct")}
    quiet_after_s = wait_quiet([pid for pid in pids.values() if pid is not None])
    before = {role: cpu_seconds(pid) for role, pid in pids.items() if pid is not None}
    load_before = os.getloadavg()[0]
    outcome = run_one(servers.port(name), cycle, rate, seconds)
    used = {role: cpu_seconds(pid) - before[role] for role, pid in pids.items() if pid is not None and role in before}
    if name == "direct":
        used.pop("gateway", None)
    completed = sum(len(v) for v in outcome.latencies_ms.values())
    return summary.rate_entry(
        rate,
        seconds,
        outcome.latencies_ms,
        outcome.errors,
        timeouts=outcome.timeouts,
        statuses={str(k): v for k, v in sorted(outcome.statuses.items())},
        late_starts=outcome.late_starts,
        mean_lag_ms=round(outcome.lag_ms_total / max(1, int(rate * seconds)), 3),
        connections=outcome.connections_opened,
        client_cpu_pct=round(100 * outcome.client_cpu_s / outcome.wall_s, 1),
        **{f"{role}_cpu_pct": round(100 * s / outcome.wall_s, 1) for role, s in used.items()},
        **{f"{role}_cpu_us_per_request": round(1e6 * s / completed, 1) for role, s in used.items() if completed},
        loadavg_1m_before=round(load_before, 2),
        quiet_after_s=quiet_after_s,
    )


def sweep(servers: Servers, paths: list[str], rates: list[float], seconds: float, args: argparse.Namespace) -> Any:
    cycles = {
        name: requests_for(servers.port(name), args.stream_share, LITELLM_KEY if name == "litellm" else None)
        for name in paths
    }
    for name in paths:  # warm-up: connections, caches, first-call imports; not recorded
        entry = measure(servers, name, min(rates), args.warmup, cycles[name])
        print(f"warm-up {name}: {entry['success_pct']}% p50 {entry['p50_ms']} ms", flush=True)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    for index, rate in enumerate(rates):
        order = paths[index % len(paths) :] + paths[: index % len(paths)]
        for name in order:
            done = results[name]
            if done and "server_exited" in done[-1]:
                done.append({"offered_rps": rate, "skipped": f"server exited at {done[-1]['offered_rps']} RPS"})
                print(f"{rate:>6} RPS {name:8} skipped (server exited)", flush=True)
                continue
            if done and summary.is_collapsed(done[-1]):
                done.append({"offered_rps": rate, "skipped": f"collapsed at {done[-1]['offered_rps']} RPS"})
                print(f"{rate:>6} RPS {name:8} skipped (collapsed)", flush=True)
                continue
            time.sleep(args.pause)
            entry = measure(servers, name, rate, seconds, cycles[name])
            exited = servers.exit_code(name)
            if exited is not None:  # a crashed gateway: say so, and try it no further
                entry["server_exited"] = exited
            done.append(entry)
            print(
                f"{rate:>6} RPS {name:8} achieved {entry['achieved_rps']:>7} ok {entry['success_pct']:>7}% "
                f"p50 {entry['p50_ms']} p99 {entry['p99_ms']} ms late {entry['late_starts']} "
                f"cpu client {entry['client_cpu_pct']}% gw {entry.get('gateway_cpu_pct')}% "
                f"up {entry.get('upstream_cpu_pct')}%",
                flush=True,
            )
    probe(servers, results, rates, seconds, cycles, args)
    return results


def probe(
    servers: Servers,
    results: dict[str, list[dict[str, Any]]],
    rates: list[float],
    seconds: float,
    cycles: dict[str, list[tuple[str, bytes]]],
    args: argparse.Namespace,
) -> None:
    """A gateway that sustains none of the swept rates gets lower ones (`--probe-rates`, descending) until
    one holds, so its ceiling is a number; the direct path runs at the same rates for the added latency."""
    lower = sorted((r for r in args.probe_rates if r < min(rates)), reverse=True)
    for name in [n for n in results if n != "direct"]:
        if servers.exit_code(name) is not None:
            continue
        for rate in lower:
            if summary.max_sustained_rps(results[name]) is not None:
                break
            for who in [name, "direct"] if "direct" in results else [name]:
                if any(e["offered_rps"] == rate for e in results[who]):
                    continue
                time.sleep(args.pause)
                entry = measure(servers, who, rate, seconds, cycles[who])
                entry["probe"] = True
                results[who].append(entry)
                print(f"{rate:>6} RPS {who:8} (probe) ok {entry['success_pct']}% p99 {entry['p99_ms']} ms", flush=True)
    for entries in results.values():
        entries.sort(key=lambda e: e["offered_rps"])


def ledger_rows(db_path: Path) -> int | None:
    if not db_path.exists():
        return None
    with sqlite3.connect(db_path) as connection:
        return int(connection.execute("SELECT count(*) FROM ledger").fetchone()[0])


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, extra: dict[str, Any]) -> Any:
    direct = results.get("direct", [])
    paths: dict[str, Any] = {}
    for name, entries in results.items():
        paths[name] = {
            "rates": entries,
            "max_sustained_rps": summary.max_sustained_rps(entries),
            "max_served_rps": summary.max_served_rps(entries),
        }
        if name != "direct" and direct:
            paths[name]["added_vs_direct"] = summary.added_latency(entries, direct)
    margin, litellm = paths.get("margin", {}), paths.get("litellm", {})
    at_500 = next((a for a in margin.get("added_vs_direct", []) if a["offered_rps"] == 500), None)
    margin_max, litellm_max = margin.get("max_sustained_rps"), litellm.get("max_sustained_rps")
    return {
        "benchmark": "gateway_sweep",
        "what": "fake upstream (instant, 16 tokens; half the requests streamed) direct, via margin, via LiteLLM",
        "label": args.label,
        "seconds_per_rate": args.seconds,
        "stream_share": args.stream_share,
        "sustained_means": {
            "success_pct_at_least": summary.SUSTAINED_SUCCESS_PCT,
            "p99_ms_below": summary.SUSTAINED_P99_MS,
        },
        "paths": paths,
        "margin_over_litellm_max_sustained": summary.ratio(margin_max, litellm_max),
        "margin_over_litellm_max_served": summary.ratio(margin.get("max_served_rps"), litellm.get("max_served_rps")),
        "targets": {
            "margin_added_p99_ms_at_500": {"target": 1.0, "measured": at_500["added_p99_ms"] if at_500 else None},
            "margin_max_sustained_over_litellm": {
                "target": 10.0,
                "measured": summary.ratio(margin_max, litellm_max),
                "at_least": at_least(margin_max, litellm),
            },
        },
        **extra,
    }


def at_least(margin_max: float | None, litellm: dict[str, Any]) -> float | None:
    """When LiteLLM sustained none of the rates tried, the ratio is at least margin's over the lowest of them."""
    tried = [entry["offered_rps"] for entry in litellm.get("rates", []) if "p99_ms" in entry]
    if margin_max is None or litellm.get("max_sustained_rps") is not None or not tried:
        return None
    return summary.ratio(margin_max, min(tried))


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "note": "client, upstream and gateway share these cores (and other jobs may run beside them)",
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }


def resummarise(args: argparse.Namespace) -> None:
    """Recompute the summary (max sustained/served RPS, added latency, targets) and the figure of an
    earlier result from its per-rate entries, e.g. after a summary definition was added."""
    earlier = json.loads(args.from_json.read_text())
    results = {name: path["rates"] for name, path in earlier["paths"].items()}
    args.label, args.seconds = earlier.get("label", ""), earlier["seconds_per_rate"]
    args.stream_share = earlier["stream_share"]
    keep = ("margin_ledger_rows_written", "machine", "versions", "when", "notes")
    result = report(results, args, {key: earlier[key] for key in keep if key in earlier})
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    from sweep_plot import plot

    plot(result, args.png or args.out.with_suffix(".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="100,250,500,1000,2000")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--paths", default="direct,margin,litellm")
    parser.add_argument(
        "--probe-rates",
        type=lambda text: [float(r) for r in text.split(",")],
        default=[50.0, 25.0, 10.0, 5.0],
        help="lower rates tried, highest first, for a gateway that sustains none of --rates",
    )
    parser.add_argument(
        "--margin-before-src",
        type=Path,
        default=None,
        help="src/ of an older margin checkout, run as path `margin_before` (add it to --paths)",
    )
    parser.add_argument("--stream-share", type=float, default=0.5)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds of rest before each run")
    parser.add_argument("--label", default="", help="free text stored in the JSON (e.g. before/after)")
    parser.add_argument("--out", type=Path, default=RESULTS / "gateway_sweep.json")
    parser.add_argument("--png", type=Path, default=None, help="default: --out with .png")
    parser.add_argument("--from-json", type=Path, default=None, help="re-summarise an earlier result, no run")
    args = parser.parse_args()
    if args.from_json is not None:
        resummarise(args)
        return
    rates = [float(r) for r in args.rates.split(",")]
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if "litellm" in paths and not (LITELLM_VENV / "bin" / "litellm").exists():
        raise SystemExit(f"no LiteLLM at {LITELLM_VENV}: see benchmarks/README.md, or leave it out with --paths")
    with tempfile.TemporaryDirectory() as tmp, Servers(Path(tmp), free_port) as servers:
        servers.start(paths, start_upstream, args.margin_before_src)
        results = sweep(servers, paths, rates, args.seconds, args)
        rows = ledger_rows(Path(tmp) / "margin" / "ledger.db") if "margin" in paths else None
        versions = servers.versions()
    extra = {
        "margin_ledger_rows_written": rows,
        "machine": machine(),
        "versions": {**versions, "uvicorn": version("uvicorn"), "uvloop": version("uvloop")},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    result = report(results, args, extra)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    from sweep_plot import plot

    plot(result, args.png or args.out.with_suffix(".png"))
    print(json.dumps({"max_sustained_rps": {k: v["max_sustained_rps"] for k, v in result["paths"].items()}}))
    print(json.dumps({"targets": result["targets"]}))


if __name__ == "__main__":
    main()
