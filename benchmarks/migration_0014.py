"""How long migration 0014 (latency indexes keyed by bin, then time) takes on a large ledger, and what a writer
meanwhile waits: the upgrade an operator runs with `margin db upgrade` (or that `margin serve` runs at start).

    python benchmarks/migration_0014.py [--rows 1000000] [--databases sqlite,postgresql]

Per database (a temporary SQLite file; a private PostgreSQL from the test extra's wheel): migrate to 0013,
bulk-load `--rows` rows of the read benchmarks' mix (synthetic_ledger.report_rows), ANALYZE, then time the
upgrade to 0014 while a writer thread appends one ledger row every 20 ms, each in its own transaction, on its
own connection (as the ingester would; margin's engines wait up to their busy timeout on SQLite). Reported:
the upgrade's seconds, and the writer's appends: how many, how many failed, the longest wait.
Writes benchmarks/results/migration_0014.json.
"""

from __future__ import annotations

import argparse
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import synthetic_ledger as synth
from margin.ledger import db
from margin.ledger.ids import request_id
from margin.ledger.models import ledger

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


def run(url: str, rows: int, _repeat: int) -> dict[str, Any]:
    db.upgrade(url, "0013")
    started = time.perf_counter()
    synth.load(url, synth.report_rows(rows, datetime(2026, 11, 1, tzinfo=UTC)))
    synth.analyze(url)
    load_s = time.perf_counter() - started
    writer = Writer(url)
    writer.start()
    time.sleep(0.5)  # the writer's appends before the upgrade: its ordinary wait
    before = round(max(writer.waits, default=0.0), 3)
    started = time.perf_counter()
    db.upgrade(url)
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
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--out", type=Path, default=RESULTS / "migration_0014.json")
    args = parser.parse_args()
    args.repeat = 1
    timing = "wall seconds of db.upgrade(url) from 0013 to 0014 on a bulk-loaded, analyzed ledger"
    synth.run_on_databases("migration_0014", timing, args, run, args.out)


if __name__ == "__main__":
    main()
