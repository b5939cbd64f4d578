"""What each index of `ledger` costs the ingest's append: CPU of the ledger connection's
`INSERT INTO ledger … SELECT … FROM staging` plus its commit, per row, with each index dropped in turn.

    python benchmarks/ingest_indexes.py [--rows 40000] [--batch 20000] [--rounds 3] [--prefill 0]

The rows are ingest.py's (the report mix, as the gateway writes them), filled once into a staging table of a
file of their own by margin's own fill statement; each trial copies one migrated (`--prefill`: and filled)
ledger file, drops the index named (none: the schema as it is; `all`: every one but the unique key), and
appends the rows in batches of `--batch`, each committed (WAL, synchronous=NORMAL, as the ingester's
connection). Variants alternate within each round; µs CPU per row (thread time) is the median of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from ingest import gateway_rows
from margin.ledger import batch, db, ingest
from margin.ledger.outbox import encode
from margin.ledger.stager import json_array

NAMES = ", ".join(f'"{name}"' for name in ingest.COLUMNS)


def stage(path: Path, rows: int, seed: int) -> None:
    """`rows` rows in a plain `ledger_staging` table of their own file, filled as the stager fills it."""
    with sqlite3.connect(path, isolation_level=None) as connection:
        db.math_functions(connection)
        connection.execute(ingest.staging_ddl(temporary=False))
        lines = b"".join(encode(row) for row in gateway_rows(rows, datetime(2026, 12, 1, tzinfo=UTC), seed))
        connection.execute(batch._fill_sqlite(), (json_array(lines),))


def template(path: Path, prefill: Path | None) -> None:
    db.upgrade(f"sqlite:///{path}")
    if prefill is not None:
        with sqlite3.connect(path, isolation_level=None) as connection:
            connection.execute(f"ATTACH DATABASE '{prefill}' AS pre")
            connection.execute(f"INSERT INTO ledger ({NAMES}) SELECT {NAMES} FROM pre.ledger_staging ORDER BY _seq")


def trial(work: Path, base: Path, staged: Path, drop: tuple[str, ...], rows: int, size: int) -> float:
    """µs CPU a row of appending the staged rows to a copy of `base` without the `drop` indexes."""
    target = work / "trial.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(base, target)
    connection = sqlite3.connect(target, isolation_level=None)
    db.math_functions(connection)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "temp_store=MEMORY", "cache_size=-65536"):
        connection.execute(f"PRAGMA {pragma}")
    for name in drop:
        connection.execute(f'DROP INDEX "{name}"')
    connection.execute(f"ATTACH DATABASE '{staged}' AS st")
    spent = 0.0
    for first in range(0, rows, size):
        began = time.thread_time()
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            f"INSERT INTO ledger ({NAMES}) SELECT {NAMES} FROM st.ledger_staging "
            f"WHERE _seq >= {first} AND _seq < {first + size} ORDER BY _seq"
        )
        connection.execute("COMMIT")
        spent += time.thread_time() - began
    connection.close()
    return spent * 1e6 / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prefill", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/margin-ingest-indexes"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", default="", help="variants to run, comma-separated (none, all, an index)")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    staged = args.workdir / "staged.db"
    stage(staged, args.rows, 1)
    pre = None
    if args.prefill:
        pre = args.workdir / "prefill.db"
        stage(pre, args.prefill, 99)
    base = args.workdir / "base.db"
    template(base, pre)
    with sqlite3.connect(base) as connection:  # every index of `ledger` but the unique (request_id, kind)
        found = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ledger' AND sql IS NOT NULL"
        indexes = tuple(sorted(row[0] for row in connection.execute(found)))
    variants = {"none": (), **{name: (name,) for name in indexes}, "all": indexes}
    if args.only:
        variants = {name: drop for name, drop in variants.items() if name in args.only.split(",")}
    runs: dict[str, list[float]] = {name: [] for name in variants}
    loads = []
    for _ in range(args.rounds):
        loads.append(round(os.getloadavg()[0], 2))
        for name, drop in variants.items():
            runs[name].append(round(trial(args.workdir, base, staged, drop, args.rows, args.batch), 2))
    none = statistics.median(runs["none"]) if "none" in runs else 0.0
    result = {
        "rows": args.rows,
        "batch": args.batch,
        "prefill": args.prefill,
        "sqlite": sqlite3.sqlite_version,
        "indexes": list(indexes),
        "load_avg_1min_per_round": loads,
        "us_cpu_per_row": {name: {"runs": r, "median": statistics.median(r)} for name, r in runs.items()},
        "saved_us_per_row_by_dropping": {n: round(none - statistics.median(r), 2) for n, r in runs.items()},
    }
    for name, saved in result["saved_us_per_row_by_dropping"].items():
        print(f"{name:28s} {statistics.median(runs[name]):6.2f} µs/row  (saves {saved:5.2f})  {runs[name]}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
