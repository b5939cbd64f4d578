"""The report aggregates on PostgreSQL: same hand-built ledger, same answers as on SQLite (JSON equal)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from margin.ledger import db, ingest, read
from margin.ledger.feedback import Outcome, record
from margin.report.business import margins, tasks
from margin.report.focus import focus_rows
from margin.report.metrics import carbon, savings, timeseries
from margin.report.queries import Window, summarize
from margin.report.utilization import utilization
from tests.helpers import fake_settings
from tests.report.ledgers import ROWS, at, complete, load


@pytest.fixture
def pg(fresh_postgres: str) -> Iterator[sa.Engine]:
    db.upgrade(fresh_postgres)
    engine = db.make_sync_engine(fresh_postgres)
    load(engine)
    with engine.begin() as connection:  # a replay of every row: ingest drops them all, rollups unchanged
        assert ingest.ingest_batch(connection, [complete(r) for r in ROWS]) == 0
    yield engine
    engine.dispose()


def _all(engine: sa.Engine, tmp_path: Path, rollup: bool = True) -> dict[str, Any]:
    settings = fake_settings(tmp_path / "x.db", revenue={"features": {"search": {"price_per_call": "0.002"}}})
    hour = Window(at(2, 0), at(2, 1), rollup=rollup)
    november = Window(at(1), at(16), rollup=rollup)
    return {
        "summary": summarize(engine, november, "feature"),
        "tasks": [t.to_json() for t in tasks(engine, november, "feature")],
        "margins": margins(engine, november, settings.revenue, by="feature").to_json(),
        "savings": savings(engine, november).to_json(),
        "days": [p.to_json() for p in timeseries(engine, november, "day")],
        "hours": [p.to_json() for p in timeseries(engine, november, "hour")],
        "carbon": [c.to_json() for c in carbon(engine, november)],
        "utilization": [u.to_json() for u in utilization(engine, hour, settings)],
        "focus": focus_rows(engine, settings, "2026-11").rows,
        "team_tasks": [t.to_json() for t in tasks(engine, Window(at(1), at(16), team="search-team", rollup=rollup))],
        "by_customer_hours": summarize(engine, Window(at(2, 0, 45), at(3, 3, 30), rollup=rollup), "customer"),
        "days_hours_rows": [  # whole days, the partial days' hours, the partial hours' rows
            summarize(engine, Window(at(1, 22, 15), at(3, 3, 30), rollup=rollup), by) for by in ("team", "model")
        ],
        "budgets": _budgets(engine),
    }


def _budgets(engine: sa.Engine) -> list[int]:
    scopes = [("global", None), ("team", "search-team"), ("tag", "customer=acme"), ("key", "k1"), ("model", "priced")]
    with engine.connect() as connection:
        return [read.budget_spent(connection, k, v, True, at(2), at(4)) for k, v in scopes]


def test_aggregates_equal_on_postgres_and_sqlite(pg: sa.Engine, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    db.upgrade(url)
    lite = db.make_sync_engine(url)
    load(lite)
    on_pg, on_lite = _all(pg, tmp_path), _all(lite, tmp_path)
    rows_pg, rows_lite = _all(pg, tmp_path, rollup=False), _all(lite, tmp_path, rollup=False)
    lite.dispose()
    for name in on_lite:
        assert on_pg[name] == on_lite[name] == rows_pg[name] == rows_lite[name], name  # rollup = rows
    assert Decimal(on_pg["tasks"][0]["cost_per_successful_task_usd"]) == Decimal("0.006")
    assert [d["start"] for d in on_pg["days"]] == ["2026-11-02T00:00:00", "2026-11-03T00:00:00"]
    assert on_pg["savings"]["routing_saved_usd"] == "0.004000000"
    assert sum(row["BilledCost"] for row in on_pg["focus"]) == Decimal("0.007")


def test_feedback_upsert_on_postgres(pg: sa.Engine) -> None:
    record(pg, [Outcome("r7", True, None, None)], "k1", admin=False)
    record(pg, [Outcome("r7", True, None, None)], "k1", admin=False)  # a replay: no new revision
    record(pg, [Outcome("r7", False, 0.1, 5)], "k1", admin=False)
    with pg.connect() as connection:
        row = connection.execute(
            sa.text("SELECT success, score, value_nanousd, revisions FROM feedback WHERE request_id = 'r7'")
        ).one()
    assert tuple(row) == (False, 0.1, 5, 2)
