"""Time every `margin report` view and grouping (and the FOCUS export of the month) on a synthetic 1M-row
ledger over November 2026, on SQLite and on PostgreSQL.

    nice python benchmarks/report_queries.py [--rows 1000000] [--repeat 3] [--databases sqlite,postgresql]

The ledger comes from benchmarks/synthetic_ledger.py (report mix; bulk load, then `rollup.rebuild`); the
gateway's write path is timed apart (`ingest_us_per_row`: 20k rows through ingest_batch in batches of 500).
Each query runs --repeat times; best and median are kept. The load average is recorded before and after
(the machine is shared). Writes benchmarks/results/report_queries.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import synthetic_ledger as synth
from margin.config import Settings, parse_settings
from margin.ledger import db, read
from margin.report import views
from margin.report.business import margins, tasks
from margin.report.focus import export
from margin.report.metrics import carbon, savings, timeseries
from margin.report.queries import GROUPS, summarize
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
            "models": {
                name: {"backend": backend}
                for name, backend in [
                    ("small", "local"),
                    ("medium", "vllm"),
                    ("gpt-4o-mini", "api"),
                    ("gpt-4o", "api"),
                    ("embed", "local"),
                ]
            },
            "revenue": {
                "features": {f"feature-{i}": {"price_per_call": "0.001"} for i in range(8)},
                "customers": {f"customer-{i}": {"price_per_seat_month": "20", "seats": 3} for i in range(50)},
            },
        }
    )


def synthesize(url: str, rows: int) -> dict[str, Any]:
    return synth.build(url, synth.report_rows(rows, START), synth.feedback_rows(rows, 30))


def queries(engine: sa.Engine, config: Settings, out: Path) -> dict[str, Callable[[], Any]]:
    month = read.Window(START, START + timedelta(days=30))
    day = read.Window(START + timedelta(days=10), START + timedelta(days=11))
    team = read.Window(START, START + timedelta(days=30), team="team-3")
    odd = read.Window(START + timedelta(days=3, minutes=17), START + timedelta(days=27, hours=5, minutes=41))
    own = read.Window(START, START + timedelta(days=30), key_id="key-7")
    found: dict[str, Callable[[], Any]] = {
        "summary_month": lambda: summarize(engine, month),
        "summary_day": lambda: summarize(engine, day),
        "summary_unaligned_24d": lambda: summarize(engine, odd, "feature"),
        "summary_team_month": lambda: summarize(engine, team, "model"),
        "summary_own_key_month": lambda: summarize(engine, own, "model"),
        "summary_own_key_month_totals": lambda: summarize(engine, own),  # /v1/margin/usage without `by`
    }
    for by in GROUPS:

        def summary_by(by: str = by) -> dict[str, Any]:
            return summarize(engine, month, by)

        found[f"summary_month_by_{by}"] = summary_by
    found |= {
        "timeseries_month_day": lambda: timeseries(engine, month, "day"),
        "timeseries_day_hour": lambda: timeseries(engine, day, "hour"),
        "savings_month": lambda: savings(engine, month),
        "carbon_month_region": lambda: carbon(engine, month),
        "carbon_month_customer": lambda: carbon(engine, month, "customer"),
        "margin_month_feature": lambda: margins(engine, month, config.revenue),
        "margin_month_customer": lambda: margins(engine, month, config.revenue, by="customer"),
        "margin_team_month_feature": lambda: margins(engine, team, config.revenue),
        "tasks_month": lambda: tasks(engine, month),
        "tasks_month_by_feature": lambda: tasks(engine, month, "feature"),
        "tasks_month_by_customer": lambda: tasks(engine, month, "customer"),
        "tasks_team_month": lambda: tasks(engine, team),
        "utilization_month": lambda: utilization(engine, month, config),
        "utilization_team_month": lambda: utilization(engine, team, config),
        "overview_month": lambda: views.overview(engine, month, config),
        "overview_day": lambda: views.overview(engine, day, config),
        "budget_spent_month_all_scopes": lambda: _budgets(engine),
        "focus_export_month_csv": lambda: export(engine, config, "2026-11", out / "focus.csv"),
    }
    return found


def _budgets(engine: sa.Engine) -> list[int]:
    scopes = [("global", None), ("team", "team-3"), ("model", "gpt-4o"), ("key", "key-7"), ("org", "none"),
              ("tag", "customer=customer-9"), ("tag", "feature=feature-2")]  # fmt: skip
    with engine.connect() as connection:
        return [read.budget_spent(connection, k, v, True, START, START + timedelta(days=30)) for k, v in scopes]


def run(url: str, rows: int, repeat: int) -> dict[str, Any]:
    built = synthesize(url, rows)
    print(f"built {url.split(':', maxsplit=1)[0]}: {built}", flush=True)
    extra = [dict(r, request_id=f"x-{r['request_id']}") for r in synth.report_rows(20_000, START, seed=9)]
    built["ingest_us_per_row_batch_500"] = synth.ingest_cost(url, extra, 500)
    engine, config = db.make_sync_engine(url), settings(url)
    timings: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, query in queries(engine, config, Path(tmp)).items():
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                query()
                times.append(time.perf_counter() - started)
            timings[name] = {"best_s": round(min(times), 4), "median_s": round(statistics.median(times), 4)}
            print(f"{name:36s} best {min(times):8.3f} s   median {statistics.median(times):8.3f} s", flush=True)
    engine.dispose()
    return {**built, "queries": timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    synth.run_on_databases(
        "report_queries",
        "best and median of --repeat, in-process, a fresh connection per call",
        args,
        run,
        RESULTS / "report_queries.json",
    )


if __name__ == "__main__":
    main()
