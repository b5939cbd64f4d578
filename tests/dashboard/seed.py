"""A hand-built ledger with known sums: two teams, three models, an unpriced row, a cache hit, a routed
request, errors, and an old row outside the 7-day window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from margin import keys
from margin.ledger import db, ingest
from margin.ledger.feedback import link_tasks
from margin.ledger.models import feedback

NOW = datetime.now(UTC).replace(microsecond=0)


def row(n: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "request_id": f"req-{n}",
        "kind": "request",
        "created_at": NOW - timedelta(hours=1),
        "key_id": None,
        "team": "search",
        "tags": {"feature": "qa", "customer": "acme"},
        "endpoint": "chat",
        "model": "fake-chat",
        "backend": "fake",
        "status": "ok",
        "http_status": 200,
        "stream": False,
        "input_tokens": 100,
        "output_tokens": 50,
        "cached_tokens": 0,
        "ttft_ms": 40.0,
        "e2e_ms": 200.0,
        "backend_ms": 180.0,
        "cost_nanousd": 1_000_000,  # $0.001
        "cost_status": "ok",
        "energy_j": 2.5,
        "co2e_g": 0.01,
        "config_hash": "seed",
    }
    return {**base, **fields}


ROWS = [
    row(1),
    row(2, e2e_ms=400.0, ttft_ms=80.0, cost_nanousd=3_000_000, tags={"feature": "qa", "customer": "globex"}),
    row(
        3,
        team="ads",
        model="priced",
        backend="api",
        cost_nanousd=2_500_000,
        input_tokens=200,
        output_tokens=100,
        tags={"feature": "copy", "customer": "acme"},
        e2e_ms=900.0,
        ttft_ms=None,
        energy_j=None,
        co2e_g=None,
        counterfactual_nanousd=4_000_000,
    ),
    row(
        4,
        team="ads",
        model="mystery",
        backend="api",
        cost_nanousd=None,
        cost_status="unknown_price",
        input_tokens=30,
        output_tokens=10,
        energy_j=None,
        co2e_g=None,
        e2e_ms=150.0,
    ),
    row(
        5,
        kind="cache_hit",
        cost_nanousd=0,
        saved_nanousd=1_000_000,
        backend=None,
        backend_ms=None,
        input_tokens=0,
        output_tokens=0,
        e2e_ms=3.0,
        ttft_ms=3.0,
        energy_j=0.0,
        co2e_g=0.0,
        cache="hit-exact",
    ),
    row(
        6,
        status="backend_error",
        http_status=502,
        error_code="backend_error",
        output_tokens=0,
        cost_nanousd=0,
        e2e_ms=50.0,
        ttft_ms=None,
        energy_j=0.0,
        co2e_g=0.0,
    ),
    row(
        7,
        team="ads",
        model="priced",
        backend="api",
        status="timeout",
        http_status=504,
        error_code="timeout",
        input_tokens=20,
        output_tokens=0,
        cost_nanousd=20_000,
        e2e_ms=3000.0,
        ttft_ms=None,
        energy_j=None,
        co2e_g=None,
        tags={"feature": "copy"},
    ),
    row(8, created_at=NOW - timedelta(days=3), cost_nanousd=7_000_000, e2e_ms=250.0),
    row(9, created_at=NOW - timedelta(days=20), cost_nanousd=50_000_000, team="ads"),  # outside 7d
]


REVENUE = {"features": {"qa": {"price_per_call": "0.01"}, "copy": {"price_per_call": "0.002"}}}
FEEDBACK = {"req-1": True, "req-2": False, "req-3": True}  # graded: $0.0065, 2 successful → $0.00325 a task


def seed(db_path: Path | str) -> dict[str, str]:
    """Create the ledger (a SQLite file, or a database URL) with ROWS and keys; returns
    {'admin', 'search', 'ads', 'loner'} → key."""
    url = db_path if isinstance(db_path, str) else f"sqlite:///{db_path}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    try:
        with engine.begin() as connection:
            ingest.ingest_batch(connection, ROWS)
            connection.execute(
                sa.insert(feedback),
                [
                    {"request_id": rid, "success": ok, "created_at": NOW, "updated_at": NOW}
                    for rid, ok in FEEDBACK.items()
                ],
            )
            link_tasks(connection)  # written by hand: link each to its request's task, as `record` does
        made = {}
        for name, spec in {
            "admin": keys.NewKey("ops", None, {}, None, True, None),
            "search": keys.NewKey("search-svc", "search", {}, None, False, None),
            "ads": keys.NewKey("ads-svc", "ads", {}, None, False, None),
            "loner": keys.NewKey("loner", None, {}, None, False, None),
        }.items():
            made[name] = keys.create_key(engine, spec)[1]
    finally:
        engine.dispose()
    return made
