"""How fast the dashboard's pages render on a large ledger.

    python benchmarks/dashboard_load.py [--rows 1000000] [--repeat 2] [--variants ledger,rollup]

Seeds a SQLite ledger (created by the real migrations) with synthetic rows spread over 30 days — 20 teams,
8 models on 4 backends, 30 features, 500 customers, ~2% errors, ~5% cache hits, ~10% routed, ~1% unpriced —
with one bulk insert, then renders each page in-process through the gateway's ASGI app (auth, queries,
templates: everything but the socket) for each window (24h, 7d, 30d), as an admin and as a team key. Each
timing is the best of --repeat runs (the machine is shared). Variants: `ledger` (rows and indexes only; the
rollup table is renamed away) and `rollup` (migration 0004's hourly rollup `ledger_hourly`, backfilled here
as the migration does; the cost its trigger adds to an insert is measured too).
Writes benchmarks/results/dashboard_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from margin import keys
from margin.app import build_app
from margin.config import parse_settings
from margin.ledger import db
from margin.ledger import rollup as ledger_rollup

RESULTS = Path(__file__).resolve().parent / "results"
ledger_rollup_table = "ledger_hourly"
PAGES = (
    "/dashboard",
    "/dashboard/breakdown?by=team",
    "/dashboard/breakdown?by=feature",
    "/dashboard/breakdown?by=customer",
    "/dashboard/breakdown?by=model",
    "/dashboard/latency",
    "/dashboard/savings",
    "/dashboard/budgets",
    "/dashboard/backends",
)
WINDOWS = ("24h", "7d", "30d")
MODELS = [  # (model, backend, $ per 1M in, $ per 1M out) — None: unpriced
    ("gpt-4o-mini", "openai", 150, 600),
    ("gpt-4o", "openai", 2500, 10000),
    ("claude-haiku", "anthropic", 800, 4000),
    ("llama-8b", "vllm", 50, 50),
    ("llama-70b", "vllm", 400, 400),
    ("smollm2", "local", 5, 5),
    ("qwen-7b", "vllm", 40, 40),
    ("mystery", "openai", None, None),
]
BACKENDS = ("openai", "anthropic", "vllm", "local")


def settings_data(db_path: Path) -> dict[str, Any]:
    return {
        "storage": {"ledger": f"sqlite:///{db_path}"},
        "backends": {name: {"kind": "fake"} for name in BACKENDS},
        "models": {"m": {"backend": "local"}},
        "budgets": [
            {"name": "team-00", "scope": {"kind": "team", "value": "team-00"}, "usd": "5000", "period": "month"},
            {"name": "all", "scope": {"kind": "global"}, "usd": "100000", "period": "month"},
            {"name": "acme", "scope": {"kind": "tag", "value": "customer=c-001"}, "tokens": 10**9, "period": "day"},
        ],
    }


def synthetic_rows(n: int, now: datetime, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(seed)
    span = 30 * 86400
    for i in range(n):
        model, backend, p_in, p_out = MODELS[rng.randrange(len(MODELS))]
        created = now - timedelta(seconds=rng.random() * span)
        tin, tout = rng.randint(20, 2000), rng.randint(1, 800)
        kind = "cache_hit" if rng.random() < 0.05 else "request"
        error = rng.random() < 0.02
        cost = None if p_in is None else (tin * p_in + tout * p_out) * 1000  # nano-USD
        if kind == "cache_hit" or error:
            cost = 0 if cost is not None else None
        saved = (tin * (p_in or 0) + tout * (p_out or 0)) * 1000 if kind == "cache_hit" else None
        routed = cost * 3 if cost and rng.random() < 0.1 else None
        e2e = rng.lognormvariate(6, 0.8)
        tags = json.dumps({"feature": f"f-{rng.randrange(30):02d}", "customer": f"c-{rng.randrange(500):03d}"})
        yield (
            (f"r{i}", kind, created.strftime("%Y-%m-%d %H:%M:%S.%f"), f"k{rng.randrange(60):02d}",
             f"team-{rng.randrange(20):02d}", tags, "chat", model, backend,
             "error" if error else "ok", 502 if error else 200, "backend_error" if error else None, 0,
             tin, 0 if error else tout, 0, e2e * 0.2, e2e, e2e * 0.9, cost,
             "ok" if cost is not None else "unknown_price", tout * 0.1, tout * 0.1 * 475 / 3.6e6, "bench",
             saved, routed)
        )  # fmt: skip


COLUMNS = (
    "request_id, kind, created_at, key_id, team, tags, endpoint, model, backend, status, http_status, error_code, "
    "stream, input_tokens, output_tokens, cached_tokens, ttft_ms, e2e_ms, backend_ms, cost_nanousd, cost_status, "
    "energy_j, co2e_g, config_hash, saved_nanousd, counterfactual_nanousd"
)


def seed(db_path: Path, n: int) -> tuple[float, dict[str, str]]:
    """The migrations, then n rows in one batch with the rollup trigger off (it is rebuilt by add_rollup), and
    the rollup table renamed away: the `ledger` variant reads rows only."""
    url = f"sqlite:///{db_path}"
    db.upgrade(url)
    started = time.perf_counter()
    rows = synthetic_rows(n, datetime.now(UTC))
    connection = sqlite3.connect(db_path)
    connection.execute("PRAGMA synchronous=OFF")
    for statement in ledger_rollup.drop_sql("sqlite"):
        connection.execute(statement)
    connection.execute(f"ALTER TABLE {ledger_rollup_table} RENAME TO {ledger_rollup_table}_off")
    marks = ", ".join("?" * len(COLUMNS.split(",")))
    with connection:
        connection.executemany(f"INSERT INTO ledger ({COLUMNS}) VALUES ({marks})", rows)
    connection.execute("ANALYZE")
    connection.close()
    seconds = time.perf_counter() - started
    engine = db.make_sync_engine(url)
    made = {
        "admin": keys.create_key(engine, keys.NewKey("ops", None, {}, None, True, None))[1],
        "team": keys.create_key(engine, keys.NewKey("t", "team-00", {}, None, False, None))[1],
    }
    engine.dispose()
    return seconds, made


def insert_cost(db_path: Path, prefix: str, n: int = 10_000) -> float:
    """µs per ledger row for a batch insert of n rows (to price the rollup's trigger)."""
    rows = [(f"{prefix}{i}", *row[1:]) for i, row in enumerate(synthetic_rows(n, datetime.now(UTC), seed=8))]
    connection = sqlite3.connect(db_path)
    marks = ", ".join("?" * len(COLUMNS.split(",")))
    started = time.perf_counter()
    with connection:
        connection.executemany(f"INSERT INTO ledger ({COLUMNS}) VALUES ({marks})", rows)
    connection.close()
    return round((time.perf_counter() - started) / n * 1e6, 1)


def add_rollup(db_path: Path) -> dict[str, float]:
    """Bring back migration 0004's rollup: table, backfill (what the migration does), trigger."""
    before = insert_cost(db_path, "before-")
    engine = db.make_sync_engine(f"sqlite:///{db_path}")
    started = time.perf_counter()
    with engine.begin() as connection:
        connection.exec_driver_sql(f"ALTER TABLE {ledger_rollup_table}_off RENAME TO {ledger_rollup_table}")
        ledger_rollup.rebuild(connection)
        for statement in ledger_rollup.create_sql("sqlite"):
            connection.exec_driver_sql(statement)
        rolled = connection.exec_driver_sql(f"SELECT count(*) FROM {ledger_rollup_table}").scalar_one()
    backfill_s = round(time.perf_counter() - started, 1)
    engine.dispose()
    after = insert_cost(db_path, "after-")
    return {"backfill_s": backfill_s, "rollup_rows": rolled, "insert_us_per_row": before, "with_trigger": after}


async def time_pages(db_path: Path, made: dict[str, str], repeat: int) -> list[dict[str, Any]]:
    app = build_app(parse_settings(settings_data(db_path)))
    out = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://margin.bench", timeout=600) as http:
            for who in ("admin", "team"):
                headers = {"authorization": f"Bearer {made[who]}"}
                for since in WINDOWS:
                    for page in PAGES:
                        if who == "team" and "by=team" in page:
                            continue
                        url = f"{page}{'&' if '?' in page else '?'}since={since}"
                        best = float("inf")
                        for _ in range(repeat):
                            started = time.perf_counter()
                            response = await http.get(url, headers=headers)
                            best = min(best, time.perf_counter() - started)
                            assert response.status_code == 200, (url, response.status_code, response.text[:300])
                        out.append({"viewer": who, "since": since, "page": page, "ms": round(best * 1000, 1)})
                        print(f"{who:5} {since:4} {page:36} {best * 1000:9.1f} ms", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--variants", default="ledger,rollup")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "ledger.db"
        seed_s, made = seed(db_path, args.rows)
        print(f"seeded {args.rows:,} rows in {seed_s:.1f} s ({db_path.stat().st_size / 1e6:.0f} MB)", flush=True)
        runs: dict[str, Any] = {}
        rollup_stats: dict[str, float] = {}
        variants = args.variants.split(",")
        if "ledger" in variants:
            runs["ledger"] = asyncio.run(time_pages(db_path, made, args.repeat))
        if "rollup" in variants:
            rollup_stats = add_rollup(db_path)
            print(f"rollup: {rollup_stats}", flush=True)
            runs["rollup"] = asyncio.run(time_pages(db_path, made, args.repeat))
    result = {
        "benchmark": "dashboard_load",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": args.rows,
        "seed_s": round(seed_s, 1),
        "repeat": args.repeat,
        "timing": "best of repeat, in-process ASGI request incl. auth, SQL, templates",
        "rollup": rollup_stats,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "machine": {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "cpu": platform.machine()},
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dashboard_load.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
