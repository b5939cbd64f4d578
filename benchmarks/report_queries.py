"""Time of each report query (margin.report: the dashboard's and `margin report`'s) on a synthetic SQLite
ledger of N rows (default 1M) spread over November 2026.

    python benchmarks/report_queries.py [--rows 1000000] [--repeat 3] [--db /tmp/report_1m.db]

Rows are written through the gateway's own ingest path (ledger.batch.BatchSink) after `db.upgrade`, so
the indexes are the migrations'. Mix: 5 models on 3 backends (one self-hosted with hardware), 10 teams,
8 features, 200 customers, half the requests in tasks of ~3, 10% cache hits, 20% routed, 1% unknown price,
2% errors; feedback on 20% of the tasks. Each query runs `--repeat` times; the best and the median are kept.
Writes benchmarks/results/report_queries.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from margin.config import Settings, parse_settings
from margin.ledger import db
from margin.ledger.batch import BatchSink, Cursor
from margin.ledger.models import feedback
from margin.ledger.outbox import encode
from margin.report import views
from margin.report.business import margins, tasks
from margin.report.focus import focus_rows
from margin.report.metrics import carbon, savings, timeseries
from margin.report.queries import Window, summarize
from margin.report.utilization import utilization

RESULTS = Path(__file__).resolve().parent / "results"
START = datetime(2026, 11, 1, tzinfo=UTC)
MODELS = [("small", "local"), ("medium", "vllm"), ("gpt-4o-mini", "api"), ("gpt-4o", "api"), ("embed", "local")]


def settings(url: str) -> Settings:
    hardware = {"usd_per_hour": "2.50", "watts_busy": 700}
    return parse_settings(
        {
            "storage": {"ledger": url},
            "backends": {
                "local": {"kind": "fake", "hardware": {"usd_per_hour": "0.05", "watts_busy": 35}},
                "vllm": {"kind": "fake", "hardware": hardware},
                "api": {"kind": "fake"},
            },
            "models": {name: {"backend": backend} for name, backend in MODELS},
            "revenue": {"features": {f"feature-{i}": {"price_per_call": "0.001"} for i in range(8)}},
        }
    )


def _row(n: int, rows: int, rng: random.Random) -> dict[str, Any]:
    model, backend = MODELS[rng.randrange(len(MODELS))]
    hit, routed, unpriced = rng.random() < 0.10, rng.random() < 0.20, rng.random() < 0.01
    tags = {"feature": f"feature-{rng.randrange(8)}", "customer": f"customer-{rng.randrange(200)}"}
    if n % 2 == 0:
        tags["task_id"] = f"task-{n // 6}"
    cost = None if unpriced else (0 if hit else rng.randrange(1_000, 5_000_000))
    return {
        "request_id": f"req-{n}",
        "kind": "cache_hit" if hit else "request",
        "created_at": START + timedelta(seconds=n * 2_592_000 / rows),
        "key_id": f"key-{rng.randrange(50)}",
        "team": f"team-{rng.randrange(10)}",
        "tags": tags,
        "endpoint": "chat",
        "model": model,
        "requested_model": model,
        "backend": backend,
        "region": "eu-west" if backend != "api" else "us-east",
        "status": "ok",
        "http_status": 502 if rng.random() < 0.02 else 200,
        "stream": False,
        "input_tokens": rng.randrange(10, 2000),
        "output_tokens": rng.randrange(1, 500),
        "cached_tokens": 0,
        "e2e_ms": rng.uniform(20, 3000),
        "ttft_ms": rng.uniform(5, 300),
        "cost_nanousd": cost,
        "cost_status": "unknown_price" if unpriced else "priced",
        "config_hash": "bench",
        "energy_j": rng.uniform(1, 500) if backend != "api" else None,
        "energy_method": "modelled" if backend != "api" else None,
        "co2e_g": rng.uniform(0.01, 5) if backend != "api" else None,
        "busy_ms": rng.uniform(10, 2000) if backend != "api" and not hit else None,
        "saved_nanousd": rng.randrange(1_000, 5_000_000) if hit else None,
        "router_score": rng.random() if routed else None,
        "counterfactual_nanousd": (cost or 0) * 3 if routed and cost is not None else None,
    }


def synthesize(url: str, rows: int, seed: int = 7) -> None:
    db.upgrade(url)
    rng = random.Random(seed)
    sink, cursor = BatchSink(url), Cursor("synthetic")
    try:
        for start in range(0, rows, 10_000):
            batch = [_row(n, rows, rng) for n in range(start, min(rows, start + 10_000))]
            sink.move(cursor, b"".join(encode(row) for row in batch), len(batch))
    finally:
        sink.close()
    engine = db.make_sync_engine(url)
    now = datetime.now(UTC)
    graded = [
        {"request_id": f"req-{n}", "key_id": None, "success": rng.random() < 0.7, "score": None,
         "value_nanousd": None, "created_at": now, "updated_at": now, "revisions": 1}
        for n in range(0, rows, 30)
    ]  # fmt: skip
    with engine.begin() as connection:
        connection.execute(feedback.insert(), graded)
        connection.exec_driver_sql("ANALYZE")
    engine.dispose()


def queries(engine: sa.Engine, config: Settings) -> dict[str, Callable[[], Any]]:
    month = Window(START, START + timedelta(days=30))
    day = Window(START + timedelta(days=10), START + timedelta(days=11))
    return {
        "summarize_month": lambda: summarize(engine, month),
        "summarize_month_by_feature": lambda: summarize(engine, month, "feature"),
        "summarize_day": lambda: summarize(engine, day),
        "timeseries_month_day": lambda: timeseries(engine, month, "day"),
        "timeseries_day_hour": lambda: timeseries(engine, day, "hour"),
        "savings_month": lambda: savings(engine, month),
        "carbon_month_region": lambda: carbon(engine, month),
        "margins_month_feature": lambda: margins(engine, month, config.revenue),
        "tasks_month": lambda: tasks(engine, month),
        "utilization_month": lambda: utilization(engine, month, config),
        "overview_month": lambda: views.overview(engine, month, config),
        "overview_month_without_tasks": lambda: views.overview(engine, month, config, with_tasks=False),
        "overview_day": lambda: views.overview(engine, day, config),
        "focus_rows_month": lambda: focus_rows(engine, config, "2026-11"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--db", type=Path, default=Path("/tmp/margin_report_bench.db"))
    parser.add_argument("--reuse", action="store_true", help="Keep an existing --db of the same size.")
    args = parser.parse_args()
    url = f"sqlite:///{args.db}"
    started = time.perf_counter()
    if not args.reuse or not args.db.exists():
        args.db.unlink(missing_ok=True)
        synthesize(url, args.rows)
    built_s = time.perf_counter() - started
    engine, config = db.make_sync_engine(url), settings(url)
    timings: dict[str, Any] = {}
    for name, run in queries(engine, config).items():
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        timings[name] = {"best_s": round(min(times), 4), "median_s": round(statistics.median(times), 4)}
        print(f"{name:32s} best {min(times):8.3f} s   median {statistics.median(times):8.3f} s", flush=True)
    engine.dispose()
    result = {
        "benchmark": "report_queries",
        "rows": args.rows,
        "database": "sqlite (WAL, migrations' indexes)",
        "repeat": args.repeat,
        "build_s": round(built_s, 1),
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus_note": "shared 2-core machine; other jobs ran at the same time",
        "queries": timings,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "report_queries.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
