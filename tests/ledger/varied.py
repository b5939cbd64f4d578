"""A varied ledger for the rollup tests: NULL and '' dimensions, numeric and missing tags, requests of one
task spread over batches and arriving out of order (their anchor moves, across days), identical instants,
other kinds (refunds), unpriced rows, errors, NULL latencies; cut into batches of uneven sizes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from margin.ledger import db, ingest, rollup
from tests.report.ledgers import complete, row


def _tags(rng: random.Random, i: int) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if rng.random() < 0.9:
        found["feature"] = rng.choice(["search", "chat", "", "x-y_z", 7])
    if rng.random() < 0.9:
        found["customer"] = rng.choice(["acme", "globex", "initech", "42", 42, None])
    if rng.random() < 0.6:
        found["task_id"] = f"t{rng.randrange(max(1, i // 4) + 5)}"
    return found


def varied_rows(n: int, seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    start = datetime(2026, 11, 2, 22, tzinfo=UTC)
    rows = []
    for i in range(n):
        at = start + timedelta(minutes=rng.randrange(0, 60 * 30))  # ~30 hours: 3 days, many hours
        error = rng.random() < 0.1
        priced = rng.random() < 0.85
        values: dict[str, Any] = {
            "kind": rng.choice(["request"] * 8 + ["cache_hit", "refund"]),
            "created_at": at if rng.random() < 0.9 else start,  # identical instants
            "key_id": rng.choice(["k1", "k2", None]),
            "team": rng.choice(["search-team", "ads", "", None]),
            "user": rng.choice(["u1", None]),
            "org": rng.choice(["acme-org", None]),
            "tags": _tags(rng, i),
            "model": rng.choice(["priced", "fake-chat", None]),
            "backend": rng.choice(["api", "fake", None]),
            "region": rng.choice(["eu", "us", None]),
            "status": "error" if error else "ok",
            "http_status": rng.choice([429, 502]) if error else 200,
            "error_code": rng.choice(["rate_limited", None]) if error else None,
            "input_tokens": rng.randrange(0, 500),
            "output_tokens": rng.randrange(0, 300),
            "e2e_ms": rng.choice([0.0, -1.0, rng.uniform(0.5, 5000)]),
            "ttft_ms": rng.choice([None, rng.uniform(1, 400)]),
            "cost_nanousd": rng.randrange(0, 5_000_000) if priced else None,
            "cost_status": "priced" if priced else "unknown_price",
            "energy_j": rng.choice([None, rng.uniform(0, 50)]),
            "energy_method": rng.choice([None, "modelled", "measured"]),
            "co2e_g": rng.choice([None, rng.uniform(0, 2)]),
            "busy_ms": rng.choice([None, rng.uniform(1, 900)]),
            "backend_ms": rng.choice([None, 0.0, rng.uniform(1, 900)]),
            "saved_nanousd": rng.choice([None, rng.randrange(0, 9_000)]),
            "router_score": rng.choice([None, rng.random()]),
            "counterfactual_nanousd": rng.choice([None, rng.randrange(0, 9_000_000)]),
        }
        rows.append(complete(row(f"v{i}", **values)))
    return rows


def batches(rows: list[dict[str, Any]], seed: int = 5) -> list[list[dict[str, Any]]]:
    rng, out, at = random.Random(seed), [], 0
    while at < len(rows):
        size = rng.choice([1, 2, 7, 40, 150])
        out.append(rows[at : at + size])
        at += size
    return out


def ingested(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    """`rows` into a ledger whose rollups keep the tag keys `feature` and `customer`, the ingester's way: in
    batches of uneven sizes, the rollups updated batch by batch."""
    with engine.begin() as connection:
        rollup.rebuild(connection, ("feature", "customer"))
    for part in batches(rows):
        with engine.begin() as connection:
            ingest.ingest_batch(connection, part)


@contextmanager
def sqlite_ledger(path: Path) -> Iterator[sa.Engine]:
    """A migrated SQLite ledger at `path`, disposed of after."""
    url = f"sqlite:///{path}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def snapshot(engine: sa.Engine) -> dict[str, list[Any]]:
    with engine.connect() as connection:
        return {t.name: sorted(map(tuple, connection.execute(sa.select(t))), key=str) for t in rollup.ROLLUPS}


def assert_equals_a_rebuild(engine: sa.Engine) -> None:
    """The rollups kept batch by batch hold a rebuild's integers. The one difference a rebuild has: a task
    whose anchor moved leaves its old ledger_task_daily group at zero."""
    incremental = snapshot(engine)
    with engine.begin() as connection:
        rollup.rebuild(connection)
    rebuilt = snapshot(engine)
    incremental["ledger_task_daily"] = [r for r in incremental["ledger_task_daily"] if r[4:] != (0, 0, 0)]
    assert incremental == rebuilt
