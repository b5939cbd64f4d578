"""Time a per-tag-value budget's rebuild from the ledger: `budget_spent(connection, "tag", "customer=<value>", …)`
over a month, the read governance runs the first time each customer's counter is used after a restart (or after
Redis lost it). Run it with two checkouts in turn to compare them on one ledger file:

    PYTHONPATH=<checkout>/src python benchmarks/tag_budget_spent.py --ledger /tmp/tagspend/ledger.db \
        [--rows 1000000] [--customers 20] [--repeat 5] [--postgres ROWS [--no-sqlite]]

The ledger is built when the file is missing: synthetic_ledger's report mix over November 2026 (50 keys, 200
customers drawn independently of the key, 10% cache hits), with 50 api_keys rows: key-0…24 bound to
`customer=*`, key-25…29 to the fixed `customer=customer-7`, key-30…49 unbound (their rows' customer tags are
labels, which must not count). Each run first upgrades the ledger to the checkout's head (timed: a migration
that adds an index builds it then). Each of --customers customers' month spend is read in usd and in tokens,
--repeat times; per read the best and median seconds, and `digest`, a hash of every answer, so two checkouts'
answers can be compared. `--postgres ROWS` also builds a ledger of that many rows in a private PostgreSQL
(tests/servers.py) and times the same reads there (with the checkout's migrations only: no before/after on one
database). Prints one JSON line per database.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import synthetic_ledger as synth
from margin.ledger import db
from margin.ledger.models import api_keys
from margin.ledger.read.budget import budget_spent

START = datetime(2026, 11, 1, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)


def key_rows() -> list[dict[str, Any]]:
    def tags(i: int) -> dict[str, str]:
        return {"customer": "*"} if i < 25 else {"customer": "customer-7"} if i < 30 else {"feature": "*"}

    return [
        {"id": f"key-{i}", "name": f"key-{i}", "team": None, "tags": tags(i), "key_hash": f"{i:064d}",
         "created_at": START}
        for i in range(50)
    ]  # fmt: skip


def build(url: str, rows: int) -> dict[str, Any]:
    built = synth.build(url, synth.report_rows(rows, START), synth.feedback_rows(rows, 10_000))
    engine = db.make_sync_engine(url)
    with engine.begin() as connection:
        connection.execute(api_keys.insert(), key_rows())
    engine.dispose()
    return built


def run(url: str, customers: int, repeat: int) -> dict[str, Any]:
    started = time.perf_counter()
    db.upgrade(url)
    upgrade_s = time.perf_counter() - started
    engine = db.make_sync_engine(url)
    times: list[float] = []
    answers: list[int] = []
    with engine.connect() as connection:
        for _ in range(repeat):
            answers = []
            for c in range(customers):
                for usd in (True, False):
                    began = time.perf_counter()
                    answers.append(budget_spent(connection, "tag", f"customer=customer-{c}", usd, START, END))
                    times.append(time.perf_counter() - began)
    engine.dispose()
    return {
        "upgrade_s": round(upgrade_s, 2),
        "reads": len(times),
        "best_ms": round(min(times) * 1000, 2),
        "median_ms": round(statistics.median(times) * 1000, 2),
        "max_ms": round(max(times) * 1000, 2),
        "customer_7_usd": answers[14] if customers > 7 else None,
        "digest": hashlib.sha256(json.dumps(answers).encode()).hexdigest()[:16],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledger", type=Path, default=Path("/tmp/tagspend/ledger.db"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgres", type=int, default=0, help="also on PostgreSQL, a ledger of this many rows")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    args = parser.parse_args()
    url = f"sqlite:///{args.ledger}"
    if not args.no_sqlite:
        if not args.ledger.exists():
            args.ledger.parent.mkdir(parents=True, exist_ok=True)
            print(json.dumps({"built": build(url, args.rows)}), flush=True)
        result = run(url, args.customers, args.repeat)
        print(json.dumps({"database": "sqlite", "rows": args.rows, **result}), flush=True)
    if args.postgres:
        with synth.postgres() as pg:
            build(pg, args.postgres)
            result = run(pg, args.customers, args.repeat)
        print(json.dumps({"database": "postgresql", "rows": args.postgres, **result}), flush=True)


if __name__ == "__main__":
    main()
