"""Gateway sweep: one fake OpenAI upstream (its own process, instant reply, 16 tokens) reached four ways in
one run: directly; through a bare pass-through proxy on the same server stack as margin (benchmarks/
bare_proxy.py: the floor for a Python gateway); through `margin serve` (an API key, a global budget, a global
rate limit and the SQLite ledger on; one worker); through LiteLLM's proxy (`litellm[proxy]==1.106.2` in its
own virtualenv, one worker, no database). Two separate sweeps: whole JSON answers (`json`) and streams
(`sse`, 16 content events + finish + usage). Open-loop rates (default 100, 250, 500, 1000, 2000 RPS), each
path in turn at each rate, the order rotating per rate.

    python benchmarks/gateway_sweep.py [--modes json,sse] [--rates 100,250,500,1000,2000] [--seconds 10]
        [--paths direct,bare,margin,litellm] [--server uvicorn|granian]

The client is benchmarks/fastload.py (raw keep-alive connections + httptools), in this process. Writes
benchmarks/results/gateway_sweep.json: `modes.<json|sse>.paths.<path>` (`rates[]` with latency, success,
and each process's CPU per request; `max_sustained_rps`; added latency vs direct) and
`modes.<mode>.targets` (issue 14: margin vs the bare proxy at 500 RPS), plus gateway_sweep.png (JSON) and
gateway_sweep_sse.png. LiteLLM's virtualenv: benchmarks/.venv-litellm (see benchmarks/README.md).
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
from sweep_servers import LITELLM_VENV, Servers, cpu_seconds

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PROMPT = [{"role": "user", "content": "Say hello to the benchmark."}]
PATH = "/v1/chat/completions"


def requests_for(port: int, mode: str, auth: str | None) -> list[tuple[str, bytes]]:
    """The request of a sweep, pre-built: a whole answer (`json`) or a stream (`sse`)."""
    headers = {"Authorization": f"Bearer {auth}"} if auth else None
    data: dict[str, Any] = {"model": "bench", "messages": PROMPT, "max_tokens": 16}
    if mode == "sse":
        data["stream"] = True
    return [(mode, build_request("127.0.0.1", port, PATH, orjson.dumps(data), headers))]


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


def sweep(
    servers: Servers, paths: list[str], rates: list[float], seconds: float, args: argparse.Namespace, mode: str
) -> Any:
    print(f"== {mode} sweep", flush=True)
    cycles = {name: requests_for(servers.port(name), mode, servers.auth(name)) for name in paths}
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


def mode_report(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
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
    margin_max, litellm_max = margin.get("max_sustained_rps"), litellm.get("max_sustained_rps")
    targets = summary.versus_bare(results.get("margin", []), results.get("bare", []), direct, 500.0)
    targets["margin_max_sustained_over_litellm"] = {
        "measured": summary.ratio(margin_max, litellm_max),
        "at_least": at_least(margin_max, litellm),
    }
    return {"paths": paths, "targets": targets}


def report(modes: dict[str, dict[str, list[dict[str, Any]]]], args: argparse.Namespace, extra: dict[str, Any]) -> Any:
    return {
        "benchmark": "gateway_sweep",
        "what": "fake upstream (instant, 16 tokens) direct, via a bare proxy, via margin, via LiteLLM; JSON and SSE",
        "label": args.label,
        "server": args.server,
        "seconds_per_rate": args.seconds,
        "sustained_means": {
            "success_pct_at_least": summary.SUSTAINED_SUCCESS_PCT,
            "p99_ms_below": summary.SUSTAINED_P99_MS,
        },
        "modes": {mode: mode_report(results) for mode, results in modes.items()},
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
    by_mode = earlier.get("modes", {"mixed": earlier})  # issue 6 wrote one mixed sweep, no `modes`
    modes = {mode: {name: path["rates"] for name, path in m["paths"].items()} for mode, m in by_mode.items()}
    args.label, args.seconds = earlier.get("label", ""), earlier["seconds_per_rate"]
    args.server = earlier.get("server", "uvicorn")
    keep = ("margin_ledger_rows_written", "machine", "versions", "when", "notes")
    result = report(modes, args, {key: earlier[key] for key in keep if key in earlier})
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plots(result, args)


def plots(result: dict[str, Any], args: argparse.Namespace) -> None:
    from sweep_plot import plot

    base = args.png or args.out.with_suffix(".png")
    for mode, data in result["modes"].items():
        out = base if mode == "json" else base.with_name(f"{base.stem}_{mode}{base.suffix}")
        plot({**result, "paths": data["paths"], "mode": mode}, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="100,250,500,1000,2000")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--paths", default="direct,bare,margin,litellm")
    parser.add_argument("--modes", default="json,sse", help="separate sweeps: whole answers (json), streams (sse)")
    parser.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn", help="for margin and bare")
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
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    with tempfile.TemporaryDirectory() as tmp, Servers(Path(tmp), free_port, args.server) as servers:
        servers.start(paths, start_upstream, args.margin_before_src)
        results = {mode: sweep(servers, paths, rates, args.seconds, args, mode) for mode in modes}
        rows = ledger_rows(Path(tmp) / "margin" / "ledger.db") if "margin" in paths else None
        versions = servers.versions()
    server_version = version("granian") if args.server == "granian" else version("uvicorn")
    extra = {
        "margin_ledger_rows_written": rows,
        "machine": machine(),
        "versions": {**versions, args.server: server_version, "uvloop": version("uvloop")},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    result = report(results, args, extra)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plots(result, args)
    for mode, data in result["modes"].items():
        print(mode, json.dumps({k: v["max_sustained_rps"] for k, v in data["paths"].items()}))
        print(mode, json.dumps(data["targets"]))


if __name__ == "__main__":
    main()
