"""The Batch API's own cost, and what grid-aware scheduling saves on the bundled curves.

    python benchmarks/batches.py [--lines 400] [--rounds 3]

1. Throughput: a gateway built in this process with an instant fake backend (SQLite ledger). The same N chat
   requests run (a) as one batch job (upload, create, worker, output file) and (b) as N direct API calls
   from a client at the same concurrency (4, then 16) through the same in-process ASGI transport. The difference is the
   worker's bookkeeping: per dispatch round one transaction starting lines and one ledger flush plus one
   transaction recording those that landed. Interleaved rounds.
2. Scheduling: for each bundled zone, January and July, a job submitted at each hour of the day with a 24h
   window on one deployment without a capacity limit: the planned gCO2e (and $ where the zone has prices)
   against running at once. Capacity limits and several regions only add choices; this is one region.
Writes benchmarks/results/batches.json (with the load average).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from margin.app import build_app
from margin.batches.planning import Placed, Planner
from margin.config import Settings, parse_settings
from margin.economics.carbon import GridTable
from margin.economics.curves import CurveSet
from margin.economics.meter import Meter
from margin.economics.prices import PriceBook

RESULTS = Path(__file__).resolve().parent / "results"
BODY = {"model": "bench", "messages": [{"role": "user", "content": "Summarise the ticket in one line."}]}


def _settings(db: Path, concurrency: int) -> Settings:
    return parse_settings(
        {
            "storage": {"ledger": f"sqlite:///{db}"},
            "backends": {
                "up": {"kind": "fake", "output_tokens": 16, "hardware": {"usd_per_hour": "2", "watts_busy": 300}}
            },
            "models": {"bench": {"backend": "up"}},
            "cache": {"enabled": False},
            "batches": {"objective": "asap", "concurrency": concurrency, "poll_s": 0.02},
        }
    )


async def _as_batch(http: httpx.AsyncClient, lines: int) -> float:
    content = b"".join(
        orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": BODY}) + b"\n"
        for i in range(lines)
    )
    started = time.perf_counter()
    upload = (await http.post("/v1/files", files={"file": ("b.jsonl", content)}, data={"purpose": "batch"})).json()
    job = {"input_file_id": upload["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    batch = (await http.post("/v1/batches", json=job)).json()
    while True:
        state = (await http.get(f"/v1/batches/{batch['id']}")).json()
        if state["status"] == "completed":
            break
        await asyncio.sleep(0.01)
    await http.get(f"/v1/files/{state['output_file_id']}/content")
    assert state["request_counts"]["completed"] == lines, state
    return time.perf_counter() - started


async def _direct(http: httpx.AsyncClient, lines: int, concurrency: int) -> float:
    queue = list(range(lines))

    async def client() -> None:
        while queue:
            queue.pop()
            reply = await http.post("/v1/chat/completions", json=BODY)
            assert reply.status_code == 200

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started


async def throughput(lines: int, rounds: int, concurrency: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {"batch": [], "direct": []}
    with tempfile.TemporaryDirectory() as tmp:
        app = build_app(_settings(Path(tmp) / "ledger.db", concurrency))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost", timeout=120) as http:
                await _direct(http, 50, concurrency)  # warm-up
                for _ in range(rounds):
                    times["batch"].append(await _as_batch(http, lines))
                    times["direct"].append(await _direct(http, lines, concurrency))
    batch, direct = statistics.median(times["batch"]), statistics.median(times["direct"])
    return {
        "lines": lines,
        "concurrency": concurrency,
        "rounds": rounds,
        "batch_s": [round(t, 3) for t in times["batch"]],
        "direct_s": [round(t, 3) for t in times["direct"]],
        "batch_lines_per_s": round(lines / batch, 1),
        "direct_requests_per_s": round(lines / direct, 1),
        "bookkeeping_ms_per_line": round((batch - direct) / lines * 1000, 3),
    }


def _zone_settings(zone: str, has_price: bool) -> Settings:
    return parse_settings(
        {
            "regions": {"r": {"curve": zone, "price_curve": has_price, "pue": 1.1}},
            "backends": {
                "gpu": {"kind": "fake", "region": "r", "hardware": {"usd_per_hour": "2.5", "watts_busy": 700}}
            },
            "models": {"m": {"backend": "gpu"}},
            "batches": {"objective": "carbon"},
        }
    )


def scheduling() -> list[dict[str, Any]]:
    curves = CurveSet.bundled()
    out = []
    for zone in sorted(curves.zones()):
        has_price = curves.at(zone, datetime(2023, 1, 1, tzinfo=UTC)).usd_per_kwh is not None  # type: ignore[union-attr]
        settings = _zone_settings(zone, has_price)
        meter = Meter(settings, GridTable.bundled(), PriceBook())
        options = [Placed.all(settings)["m"]]
        for month in (1, 7):
            carbon, cost = [], []
            for hour in range(24):
                now = datetime(2026, month, 10, hour, 0, tzinfo=UTC)
                deadline = now + timedelta(hours=24)
                green = Planner(settings, meter).plan(options, 1_000_000, now, deadline, {}, "carbon")
                carbon.append(green["saving"]["co2e_pct"] or 0.0)
                if has_price:
                    cheap = Planner(settings, meter).plan(options, 1_000_000, now, deadline, {}, "cost")
                    cost.append(cheap["saving"]["cost_pct"] or 0.0)
            out.append(
                {
                    "zone": zone,
                    "month": month,
                    "carbon_saving_pct_mean": round(statistics.mean(carbon), 2),
                    "carbon_saving_pct_max": round(max(carbon), 2),
                    "cost_saving_pct_mean": round(statistics.mean(cost), 2) if cost else None,
                    "cost_saving_pct_max": round(max(cost), 2) if cost else None,
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "what": "Batch API bookkeeping per line (fake backend, in-process) and scheduling savings on bundled curves",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_before": load_before},
        "throughput": [asyncio.run(throughput(args.lines, args.rounds, c)) for c in (4, 16)],
        "scheduling": {
            "job": "1M tokens, 24h window, one deployment (700 W, PUE 1.1, $2.5/h), no capacity limit",
            "curves": "bundled: 2023 typical day per month (Electricity Maps LCA intensity, wholesale prices)",
            "zones": scheduling(),
        },
    }
    result["machine"]["load_avg_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batches.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    for row in result["throughput"]:
        print({k: v for k, v in row.items() if k not in ("batch_s", "direct_s")})
    for row in result["scheduling"]["zones"]:
        print(row)


if __name__ == "__main__":
    main()
