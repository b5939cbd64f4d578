"""What the exact cache's SQLite table takes on disk against `cache.max_disk_bytes`.

    python benchmarks/cache_disk_overhead.py [--bound 4194304] [--sizes 200,1000,2000,5000,20000] [--times 3]

The bound counts each entry's key and value bytes (`SqliteCache.disk_bytes`); SQLite also keeps each row's
header, the key again in the primary key's index, the expiry index, and pages partly filled. For each answer
size, entries are written through `SqliteCache` until `--times` × the bound has gone in (eviction keeps the
table at ≤ the bound), then the pages of the table and its two indexes are read from SQLite's `dbstat`, and the
file's size after a WAL checkpoint (a file of its own: the ledger's tables are not in it; the pages eviction
freed stay in the file, on its free list, and are reused). Writes benchmarks/results/cache_disk_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from margin.cache.exact import Entry, MemoryCache, SqliteCache
from margin.ledger.models import cache_entries

RESULTS = Path(__file__).resolve().parent / "results"
BTREES = ("cache_entries", "sqlite_autoindex_cache_entries_1", "ix_cache_entries_expires")


async def fill(path: str, bound: int, size: int, times: int) -> int:
    store = SqliteCache(path, MemoryCache(64 * 1024 * 1024), max_disk_bytes=bound)
    written, index = 0, 0
    while written < times * bound:
        entry = Entry("x" * size, "stop", 10, size // 4, 1000, "m", 1_700_000_000.0)
        key = f"{index:064x}"
        await store.put(key, entry, 3600)
        written += len(key) + len(entry.to_bytes())
        index += 1
        if index % 256 == 0:  # the queued writes in (a full queue drops writes: the table would not fill)
            await store.disk_usage()
    counted = await store.disk_usage()
    await store.close()
    return counted


def measure(bound: int, size: int, times: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "cache.db")
        engine = sa.create_engine(f"sqlite:///{path}")
        cache_entries.create(engine)
        engine.dispose()
        counted = asyncio.run(fill(path, bound, size, times))
        with sqlite3.connect(path) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            page = int(connection.execute("PRAGMA page_size").fetchone()[0])
            marks = ",".join("?" * len(BTREES))
            sql = f"SELECT name, count(*) FROM dbstat WHERE name IN ({marks}) GROUP BY name"
            pages = dict(connection.execute(sql, BTREES).fetchall())
            free = int(connection.execute("PRAGMA freelist_count").fetchone()[0])
            rows = int(connection.execute("SELECT count(*) FROM cache_entries").fetchone()[0])
        used = sum(pages.values()) * page
        file_bytes = os.path.getsize(path)
    return {
        "entry_value_chars": size,
        "rows": rows,
        "counted_bytes": counted,
        "btree_pages": pages,
        "btree_bytes": used,
        "free_list_bytes": free * page,
        "file_bytes": file_bytes,
        "btree_over_counted": round(used / counted, 3),
        "btree_over_bound": round(used / bound, 3),
        "file_over_bound": round(file_bytes / bound, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bound", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--sizes", default="200,1000,2000,5000,20000")
    parser.add_argument("--times", type=int, default=3)
    args = parser.parse_args()
    runs = [measure(args.bound, int(size), args.times) for size in args.sizes.split(",")]
    result = {"bound": args.bound, "times": args.times, "sqlite": sqlite3.sqlite_version, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cache_disk_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
