"""Peak RSS of `margin export focus` (CSV and Parquet, default grain and `--tags feature,customer`) on synthetic
November ledgers (benchmarks/synthetic_ledger.py's report mix) of several sizes.

Each export runs in a child process of its own (its peak RSS: `getrusage(RUSAGE_SELF).ru_maxrss`, with its CPU
seconds), with the `margin` package from `--src` (default: this tree's src/), so a before/after pair is two runs
of this script with two trees, alternated: `--src /tmp/old/src` then the default. The ledgers are built once
under `--cache` (SQLite; rollups rebuilt) and reused.

    PYTHONPATH=src python benchmarks/focus_memory.py --rows 200000 1000000 --label after --out results/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import synthetic_ledger as synth
from margin.ledger import db, rollup

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 11, 1, tzinfo=UTC)
CHILD = """
import json, resource, sys
from pathlib import Path
from margin.ledger import db
from margin.report.focus import export

url, out, tags = sys.argv[1], Path(sys.argv[2]), tuple(t for t in sys.argv[3].split(",") if t)
engine = db.make_sync_engine(url)
from report_queries import settings as bench_settings
settings = bench_settings(url)
result = export(engine, settings, "2026-11", out, tags=tags)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"charges": result.count, "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
                  "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "bytes": out.stat().st_size}))
"""


def ledger(cache: Path, rows: int) -> str:
    path = cache / f"focus-{rows}.db"
    url = f"sqlite:///{path}"
    if not path.exists():
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        partial_url = f"sqlite:///{partial}"
        db.upgrade(partial_url)
        synth.load(partial_url, synth.report_rows(rows, START))
        engine = db.make_sync_engine(partial_url)
        with engine.begin() as connection:
            rollup.rebuild(connection, rollup.DEFAULT_TAG_KEYS)
        engine.dispose()
        partial.rename(path)
    return url


def measure(src: Path, url: str, out: Path, tags: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{Path(__file__).parent}"}
    command = [sys.executable, "-c", CHILD, url, str(out), tags]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    out.unlink()
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--src", type=Path, default=ROOT / "src")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/margin-focus-bench"))
    parser.add_argument("--label", default="this tree")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in args.rows:
        url = ledger(args.cache, rows)
        for tags in ("", "feature,customer"):
            for suffix in (".csv", ".parquet"):
                found = measure(args.src, url, args.cache / f"out{suffix}", tags)
                results.append({"ledger_rows": rows, "tags": tags or None, "format": suffix[1:], **found})
                print(json.dumps(results[-1]), flush=True)
    old = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    old["runs"].append({"label": args.label, "src": str(args.src), "results": results})
    args.out.write_text(json.dumps(old, indent=1) + "\n")


if __name__ == "__main__":
    main()
