"""Exact latency percentiles on a 1M-row SQLite ledger: the value-keyed index walk that migration 0014
replaced (`before`, kept here to compare) against the (bin, time) index margin reads now (`after`).

    python benchmarks/exact_percentiles_ab.py [--rows 1000000] [--workdir /tmp/exact-ab]

The ledger is synthetic_ledger's report mix over November 2026 (as report_queries.py builds it); both
indexes are on it, and each walk names its own with INDEXED BY. Per window (a month, a day, 24 unaligned
days, one team's month): `exact()` for e2e p50/p95/p99 and TTFT p50, best of 3, twice in turn; both must
return the same values. Writes benchmarks/results/exact_percentiles_ab.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import synthetic_ledger as synth
from margin.ledger import db
from margin.ledger import measures as m
from margin.ledger.models import ledger
from margin.ledger.read import latency
from margin.ledger.read.window import Window

RESULTS = Path(__file__).resolve().parent / "results"
START = datetime(2026, 11, 1, tzinfo=UTC)
Walk = Callable[[sa.Connection, Window, str, int, int], float | None]


def value_walk(connection: sa.Connection, window: Window, metric: str, bin_: int, offset: int) -> float | None:
    """Before migration 0014: walk the index keyed by the value itself over the bin's range."""
    column = ledger.c[m.METRICS[metric]]
    low, high = m.bin_bounds(bin_)
    in_bin = sa.literal_column(m.latency_bin(f"ledger.{column.name}")) == bin_
    slack = 1e-9
    bounds = [column <= 0] if bin_ == m.ZERO_BIN else [column >= low * (1 - slack), column < high * (1 + slack)]
    query = sa.select(column).where(*window.where(), *bounds, in_bin).order_by(column).offset(offset).limit(1)
    sql = str(query.compile(connection, compile_kwargs={"literal_binds": True}))
    index = f"ix_ledger_{metric}_created"
    value = connection.exec_driver_sql(sql.replace("FROM ledger", f"FROM ledger INDEXED BY {index}", 1)).scalar()
    return None if value is None else float(value)


def timed(connection: sa.Connection, window: Window, walk: Walk) -> tuple[float, Any]:
    latency._walk = walk  # type: ignore[assignment]
    best, found = float("inf"), None
    for _ in range(3):
        began = time.perf_counter()
        e2e = latency.exact(connection, window, "e2e", (50, 95, 99))
        found = (e2e, latency.exact(connection, window, "ttft", (50,)))
        best = min(best, time.perf_counter() - began)
    return round(best, 4), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/exact-ab"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{args.workdir / 'ledger.db'}"
    synth.build(url, synth.report_rows(args.rows, START), synth.feedback_rows(args.rows, 30))
    engine = db.make_sync_engine(url)
    with engine.begin() as connection:
        for metric in ("e2e", "ttft"):
            name, column = f"ix_ledger_{metric}_created", f"{metric}_ms"
            connection.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {name} ON ledger ({column}, created_at, kind)")
    after: Walk = latency._walk
    when = datetime.now(UTC).isoformat()
    out: dict[str, Any] = {"benchmark": "exact_percentiles_ab", "rows": args.rows, "when": when}
    with engine.connect() as connection:
        team = connection.exec_driver_sql("SELECT team FROM ledger WHERE team IS NOT NULL LIMIT 1").scalar()
        windows = {
            "month": Window(START, START + timedelta(days=30)),
            "day": Window(START + timedelta(days=10), START + timedelta(days=11)),
            "unaligned_24d": Window(START + timedelta(days=3, hours=5, minutes=30), START + timedelta(days=27, hours=2, minutes=30)),  # noqa: E501
            "team_month": Window(START, START + timedelta(days=30), team=team),
        }  # fmt: skip
        for name, window in windows.items():
            seconds: dict[str, list[float]] = {"before": [], "after": []}
            values = {}
            for label, walk in (("before", value_walk), ("after", after), ("before", value_walk), ("after", after)):
                took, values[label] = timed(connection, window, walk)
                seconds[label].append(took)
            assert values["before"] == values["after"], (name, values)
            out[name] = {"seconds": seconds, "percentiles": repr(values["after"])}
            print(name, seconds)
    latency._walk = after  # type: ignore[assignment]
    engine.dispose()
    (RESULTS / "exact_percentiles_ab.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
