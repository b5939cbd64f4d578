"""Time the usage API's reads on a synthetic SQLite ledger, with whichever margin is on PYTHONPATH: a key's own
usage (`/v1/margin/usage`: totals, by key, by model) and breakdowns capped by `?limit=` on a grouping with many
groups (`user`). Run it with two checkouts in turn to compare them on one ledger file:

    PYTHONPATH=<checkout>/src python benchmarks/usage_reads.py --ledger /tmp/usage/ledger.db \
        [--rows 1000000] [--users 100000] [--repeat 5] [--only own_key] [--memory]

The ledger is built when the file is missing: synthetic_ledger's report mix over November 2026 (50 keys,
20k rows each on 1M rows), each row with one of --users users. Each read runs --repeat times (best and median);
`digest` is a hash of its JSON answer, so two checkouts' answers can be compared. `--memory` adds one run
under tracemalloc (peak Python allocations, MiB). Prints one JSON line per read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import synthetic_ledger as synth
from margin.ledger import db
from margin.report.queries import Window, summarize

START = datetime(2026, 11, 1, tzinfo=UTC)


def rows(n: int, users: int) -> Iterator[dict[str, Any]]:
    rng = random.Random(5)
    for r in synth.report_rows(n, START):
        yield dict(r, user=f"user-{rng.randrange(users)}")


def reads(engine: sa.Engine) -> dict[str, Callable[[], dict[str, Any]]]:
    month = Window(START, START + timedelta(days=30))
    own = Window(START, None, key_id="key-7")  # /v1/margin/usage's default window: since the month began
    odd = Window(START + timedelta(days=3, minutes=17), START + timedelta(days=27, hours=5, minutes=41), key_id="key-7")
    return {
        "own_key_month_totals": lambda: summarize(engine, own, None, 1000),
        "own_key_unaligned_totals": lambda: summarize(engine, odd, None, 1000),
        "own_key_month_by_key": lambda: summarize(engine, own, "key", 1000),
        "own_key_month_by_model": lambda: summarize(engine, own, "model", 1000),
        "month_by_user_limit_1000": lambda: summarize(engine, month, "user", 1000),
        "month_by_user_limit_10": lambda: summarize(engine, month, "user", 10),
        "month_by_customer_limit_10": lambda: summarize(engine, month, "customer", 10),
        "month_by_key_limit_1000": lambda: summarize(engine, month, "key", 1000),
    }


def measure(read: Callable[[], dict[str, Any]], repeat: int, memory: bool) -> dict[str, Any]:
    times, answer = [], {}
    for _ in range(repeat):
        began = time.perf_counter()
        answer = read()
        times.append(time.perf_counter() - began)
    out: dict[str, Any] = {"best_s": round(min(times), 4), "median_s": round(statistics.median(times), 4)}
    out["digest"] = hashlib.sha256(json.dumps(answer, sort_keys=True, default=str).encode()).hexdigest()[:16]
    out["groups_total"] = answer.get("groups_total")
    if memory:
        tracemalloc.start()
        read()
        out["peak_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        tracemalloc.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledger", type=Path, default=Path("/tmp/usage/ledger.db"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", default="", help="run the reads whose name contains this")
    parser.add_argument("--memory", action="store_true")
    args = parser.parse_args()
    url = f"sqlite:///{args.ledger}"
    if not args.ledger.exists():
        args.ledger.parent.mkdir(parents=True, exist_ok=True)
        print(json.dumps({"built": synth.build(url, rows(args.rows, args.users), [])}), flush=True)
    engine = db.make_sync_engine(url)
    for name, read in reads(engine).items():
        if args.only in name:
            print(json.dumps({"read": name, **measure(read, args.repeat, args.memory)}), flush=True)
    engine.dispose()


if __name__ == "__main__":
    main()
