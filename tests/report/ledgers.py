"""A hand-built ledger with hand-computed answers, shared by the report tests (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from margin.ledger import ingest, rollup
from margin.ledger.feedback import link_tasks
from margin.ledger.models import feedback, ledger

MILLI = 1_000_000  # $0.001 in nano-USD


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def row(request_id: str, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "request_id": request_id,
        "kind": "request",
        "created_at": at(2),
        "key_id": "k1",
        "team": "search-team",
        "tags": {},
        "endpoint": "chat",
        "model": "priced",
        "backend": "api",
        "region": None,
        "status": "ok",
        "http_status": 200,
        "stream": False,
        "input_tokens": 0,
        "output_tokens": 0,
        "cached_tokens": 0,
        "e2e_ms": 10.0,
        "cost_nanousd": 0,
        "cost_status": "priced",
        "config_hash": "test",
    }
    return {**base, **values}


def tags(feature: str, customer: str, task: str | None = None) -> dict[str, str]:
    found = {"feature": feature, "customer": customer}
    return found | ({"task_id": task} if task else {})


ROWS = [
    row("r1", tags=tags("search", "acme", "t1"), cost_nanousd=1 * MILLI, input_tokens=100, output_tokens=50,
        created_at=at(2, 1)),
    row("r2", tags=tags("search", "acme", "t1"), cost_nanousd=3 * MILLI, input_tokens=200, output_tokens=100,
        created_at=at(2, 2)),
    row("r3", tags=tags("search", "globex", "t2"), cost_nanousd=2 * MILLI, input_tokens=50, output_tokens=50,
        backend="fake", model="fake-chat", region="eu", busy_ms=2000.0, backend_ms=2100.0, energy_j=3_600_000.0,
        energy_method="modelled", co2e_g=56.0, created_at=at(2, 0, 30), cost_method="tco"),
    row("r4", tags=tags("chat", "acme", "t3"), cost_nanousd=None, cost_status="unknown_price", model="mystery",
        input_tokens=10, output_tokens=10, created_at=at(3, 1)),
    row("r5", kind="cache_hit", tags=tags("chat", "initech"), cost_nanousd=0, saved_nanousd=500_000, cache="exact",
        input_tokens=20, output_tokens=5, created_at=at(3, 2)),
    row("r6", tags=tags("chat", "acme"), cost_nanousd=1 * MILLI, counterfactual_nanousd=5 * MILLI, router_score=0.8,
        input_tokens=30, output_tokens=20, created_at=at(3, 3)),
    row("r7", tags=tags("search", "acme", "t2"), cost_nanousd=0, http_status=502, status="error",
        input_tokens=5, output_tokens=0, created_at=at(3, 4)),
]  # fmt: skip

FEEDBACK = [
    {"request_id": "r1", "success": False, "score": 0.2, "value_nanousd": None},
    {"request_id": "r2", "success": True, "score": 0.9, "value_nanousd": 50_000_000},
    {"request_id": "r3", "success": False, "score": None, "value_nanousd": None},
    {"request_id": "r6", "success": True, "score": None, "value_nanousd": None},
]


def complete(values: dict[str, Any]) -> dict[str, Any]:
    """Every column named (an executemany takes its columns from the first row only)."""
    return {column.name: values.get(column.name) for column in ledger.columns if column.name != "id"}


def load(engine: sa.Engine, rows: list[dict[str, Any]] | None = None, outcomes: bool = True) -> None:
    with engine.begin() as connection:
        connection.execute(sa.delete(feedback))
        connection.execute(sa.delete(ledger))  # the ledger is append-only; tests start afresh
        rollup.rebuild(connection)
        ingest.ingest_batch(connection, [complete(r) for r in rows or ROWS])
        if outcomes:
            stamp = {"created_at": at(4), "updated_at": at(4), "key_id": "k1", "revisions": 1}
            connection.execute(feedback.insert(), [{**f, **stamp} for f in FEEDBACK])
            link_tasks(connection)  # written by hand: link each to its request's task, as `record` does
