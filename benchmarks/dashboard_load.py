"""How fast every dashboard page renders on a 1M-row ledger of the last 30 days, on SQLite and PostgreSQL.

    nice python benchmarks/dashboard_load.py [--rows 1000000] [--repeat 3] [--databases sqlite,postgresql]

The ledger comes from benchmarks/synthetic_ledger.py (dashboard mix: 20 teams, 60 keys, 8 models on 4
backends, 30 features, 500 customers, ~2% errors, ~5% cache hits, ~10% routed, ~1% unpriced; bulk load, then
`rollup.rebuild`). Each page is rendered in-process through the gateway's ASGI app (auth, reads, templates;
no socket) for each window (24h, 7d, 30d), as an admin key and as a team key (one team of 20); the timing is
the best of --repeat (median kept too). Writes benchmarks/results/dashboard_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import httpx

import synthetic_ledger as synth
from margin import keys
from margin.app import build_app
from margin.config import parse_settings
from margin.ledger import db

RESULTS = synth.ROOT / "benchmarks" / "results"
PAGES = (
    "/dashboard",
    "/dashboard/breakdown?by=team",
    "/dashboard/breakdown?by=feature",
    "/dashboard/breakdown?by=customer",
    "/dashboard/breakdown?by=model",
    "/dashboard/breakdown?by=backend",
    "/dashboard/latency",
    "/dashboard/savings",
    "/dashboard/budgets",
    "/dashboard/backends",
    "/dashboard/margin",
    "/dashboard/margin?by=customer",
)
WINDOWS = ("24h", "7d", "30d")


def settings_data(url: str) -> dict[str, Any]:
    hardware = {"usd_per_hour": "2.50", "watts_busy": 700}
    return {
        "storage": {"ledger": url},
        "backends": {
            "openai": {"kind": "fake"},
            "anthropic": {"kind": "fake"},
            "vllm": {"kind": "fake", "hardware": hardware},
            "local": {"kind": "fake", "hardware": {"usd_per_hour": "0.05", "watts_busy": 35}},
        },
        "models": {"m": {"backend": "local"}},
        "budgets": [
            {"name": "team-00", "scope": {"kind": "team", "value": "team-00"}, "usd": "5000", "period": "month"},
            {"name": "all", "scope": {"kind": "global"}, "usd": "100000", "period": "month"},
            {"name": "acme", "scope": {"kind": "tag", "value": "customer=c-001"}, "tokens": 10**9, "period": "day"},
        ],
        "revenue": {"features": {f"f-{i:02d}": {"price_per_call": "0.002"} for i in range(30)}},
    }


def seed(url: str, rows: int) -> tuple[dict[str, Any], dict[str, str]]:
    built = synth.build(url, synth.dashboard_rows(rows, datetime.now(UTC)), synth.feedback_rows(rows, 30, prefix="r"))
    engine = db.make_sync_engine(url)
    made = {
        "admin": keys.create_key(engine, keys.NewKey("ops", None, {}, None, True, None))[1],
        "team": keys.create_key(engine, keys.NewKey("t", "team-00", {}, None, False, None))[1],
    }
    engine.dispose()
    return built, made


async def time_pages(url: str, made: dict[str, str], repeat: int) -> list[dict[str, Any]]:
    app = build_app(parse_settings(settings_data(url)))
    out = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://margin.bench", timeout=600) as http:
            for who in ("admin", "team"):
                headers = {"authorization": f"Bearer {made[who]}"}
                for since in WINDOWS:
                    for page in PAGES:
                        if who == "team" and "by=team" in page:
                            continue  # the table by team is admin only
                        target = f"{page}{'&' if '?' in page else '?'}since={since}"
                        times = []
                        for _ in range(repeat):
                            started = time.perf_counter()
                            response = await http.get(target, headers=headers)
                            times.append(time.perf_counter() - started)
                            assert response.status_code == 200, (target, response.status_code, response.text[:300])
                        best, median = min(times) * 1000, statistics.median(times) * 1000
                        out.append({"viewer": who, "since": since, "page": page, "ms": round(best, 1),
                                    "median_ms": round(median, 1)})  # fmt: skip
                        print(f"{who:5} {since:4} {page:34} {best:9.1f} ms (median {median:.1f})", flush=True)
    return out


def run(url: str, rows: int, repeat: int) -> dict[str, Any]:
    built, made = seed(url, rows)
    print(f"built {url.split(':', maxsplit=1)[0]}: {built}", flush=True)
    pages = asyncio.run(time_pages(url, made, repeat))
    return {**built, "pages": pages, "slowest_ms": max(p["ms"] for p in pages)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    synth.run_on_databases(
        "dashboard_load",
        "best (and median) of --repeat, in-process ASGI request incl. auth, reads, templates",
        args,
        run,
        RESULTS / "dashboard_load.json",
    )


if __name__ == "__main__":
    main()
