"""How long one migration takes on a large ledger, and what a writer meanwhile waits: the upgrade an operator
runs with `margin db upgrade` (or that `margin serve` runs at start). Timed so far: 0014 (latency indexes keyed by
bin, then time) and 0015 (a task is its tenant's: the task rollups added up again, feedback linked again).

    python benchmarks/migration_timing.py --revision 0015 [--rows 1000000] [--databases sqlite,postgresql]

Per database (a temporary SQLite file; a private PostgreSQL from the test extra's wheel): migrate to the
revision before, bulk-load `--rows` rows of the read benchmarks' mix (synthetic_ledger.report_rows: half the
requests in tasks), one feedback row per 10 requests, the rollups as `margin db rebuild-rollups` leaves them
(what the migration replaces), ANALYZE, then time the upgrade to `--revision` while a writer thread appends
one ledger row every 20 ms, each in its own transaction, on its own connection (as the ingester would; margin's
engines wait up to their busy timeout on SQLite). Reported: the upgrade's seconds, and the writer's appends: how
many, how many failed, the longest wait. Writes benchmarks/results/migration_<revision>.json.
"""

from __future__ import annotations

import argparse
import threading
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import synthetic_ledger as synth
from margin.ledger import db, rollup
from margin.ledger.ids import request_id
from margin.ledger.models import feedback, ledger

RESULTS = Path(__file__).resolve().parent / "results"


class Writer(threading.Thread):
    """Appends one row every `every_s` until stopped; records how long each append took, and failures."""

    def __init__(self, url: str, every_s: float = 0.02) -> None:
        super().__init__(name="writer", daemon=True)
        self.engine, self.every_s = db.make_sync_engine(url), every_s
        self.waits: list[float] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.template = next(synth.report_rows(1, datetime.now(UTC)))  # every column a row has

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            row = {**self.template, "request_id": request_id(), "created_at": datetime.now(UTC)}
            began = time.perf_counter()
            try:
                with self.engine.begin() as connection:
                    connection.execute(ledger.insert(), [row])
            except sa.exc.DBAPIError as exc:
                self.failures.append(f"{type(exc.orig).__name__}: {exc.orig}"[:200])
            self.waits.append(time.perf_counter() - began)

    def report(self) -> dict[str, Any]:
        self.engine.dispose()
        return {
            "appends": len(self.waits),
            "failed": len(self.failures),
            "first_failure": self.failures[0] if self.failures else None,
            "longest_wait_s": round(max(self.waits, default=0.0), 3),
        }


def prepare(url: str, rows: int, revision: str) -> None:
    """The ledger at the revision before `revision`: rows, feedback on every 10th request, the rollups."""
    db.upgrade(url, f"{int(revision) - 1:04d}")
    synth.load(url, synth.report_rows(rows, datetime(2026, 11, 1, tzinfo=UTC)))
    engine = db.make_sync_engine(url)
    with engine.begin() as connection:
        graded = synth.feedback_rows(rows, 10)
        for start in range(0, len(graded), 10_000):
            connection.execute(feedback.insert(), graded[start : start + 10_000])
        rollup.rebuild(connection, rollup.DEFAULT_TAG_KEYS)
    engine.dispose()
    synth.analyze(url)


def run(url: str, rows: int, _repeat: int, revision: str) -> dict[str, Any]:
    started = time.perf_counter()
    prepare(url, rows, revision)
    load_s = time.perf_counter() - started
    writer = Writer(url)
    writer.start()
    time.sleep(0.5)  # the writer's appends before the upgrade: its ordinary wait
    before = round(max(writer.waits, default=0.0), 3)
    started = time.perf_counter()
    db.upgrade(url, revision)
    upgrade_s = time.perf_counter() - started
    time.sleep(0.5)
    writer.stop.set()
    writer.join()
    result = {
        "rows": rows,
        "load_s": round(load_s, 1),
        "upgrade_s": round(upgrade_s, 2),
        "writer_before_upgrade_longest_wait_s": before,
        "writer": writer.report(),
        "revision_after": db.current_revision(url),
    }
    print(url.partition(":")[0], result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--revision", default="0015", help="the migration timed (from the revision before it)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/migration_<revision>.json")
    args = parser.parse_args()
    args.repeat = 1
    before = f"{int(args.revision) - 1:04d}"
    timing = f"wall seconds of db.upgrade(url) from {before} to {args.revision} on a bulk-loaded, analyzed ledger"
    out = args.out or RESULTS / f"migration_{args.revision}.json"
    synth.run_on_databases(f"migration_{args.revision}", timing, args, partial(run, revision=args.revision), out)


if __name__ == "__main__":
    main()
