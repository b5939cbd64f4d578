"""Exact latency percentiles read through the index keyed by (bin, time) (migration 0014): many rows in the
same few bins, some outside the window or of another team or kind, on SQLite and PostgreSQL: the exact
nearest-rank value of the window's rows; both databases' plans search the index for one bin."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from margin.ledger import db, ingest, measures
from margin.ledger.read.latency import exact, percentile
from margin.ledger.read.window import Window
from tests.ledger.rows import row

DAY = datetime(2026, 11, 10, tzinfo=UTC)
QS = (50.0, 90.0, 95.0, 99.0)


def rows() -> list[dict[str, Any]]:
    """600 rows over three days, e2e in 100-140 ms (a handful of bins), ttft on every other; two teams; one
    in 25 a cache hit (it counts, as a request does)."""
    out = []
    for n in range(600):
        e2e = 100.0 + (n * 7919) % 4001 / 100
        out.append(
            row(
                f"l{n}",
                kind="cache_hit" if n % 25 == 0 else "request",
                created_at=DAY + timedelta(minutes=7 * n),
                team="a" if n % 3 else "b",
                e2e_ms=e2e,
                ttft_ms=e2e / 4 if n % 2 == 0 else None,
            )
        )
    return out


def expected(data: list[dict[str, Any]], window: Window, column: str) -> dict[float, float | None]:
    kept = [
        r[column]
        for r in data
        if r[column] is not None
        and window.since <= r["created_at"] < window.until
        and (window.team is None or r["team"] == window.team)
    ]
    return {q: percentile(sorted(kept), q) for q in QS}


def filled(url: str) -> sa.Engine:
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    with engine.begin() as connection:
        ingest.ingest_batch(connection, rows())
    return engine


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path / 'l.db'}" if request.param == "sqlite" else request.getfixturevalue("fresh_postgres")
    engine = filled(url)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("team", [None, "a"])
@pytest.mark.parametrize("metric", ["e2e", "ttft"])
def test_exact_percentiles_of_a_window_in_crowded_bins(engine: sa.Engine, team: str | None, metric: str) -> None:
    window = Window(DAY + timedelta(hours=20), DAY + timedelta(days=2, hours=3), team=team, rollup=False)
    with engine.connect() as connection:
        found = exact(connection, window, metric, QS)
    assert found == expected(rows(), window, measures.METRICS[metric])
    assert len({math.floor(math.log(v) * measures.BIN_SCALE) for v in found.values() if v}) >= 2  # several bins


def test_postgres_can_read_a_bin_from_the_index(fresh_postgres: str) -> None:
    """The read model's bin expression is the index's, so PostgreSQL's planner can use it."""
    engine = filled(fresh_postgres)
    expression = measures.latency_bin("ledger.e2e_ms")
    query = f"EXPLAIN SELECT e2e_ms FROM ledger WHERE {expression} = 55 AND created_at >= now() ORDER BY e2e_ms"
    with engine.connect() as connection:
        connection.exec_driver_sql("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in connection.exec_driver_sql(query))
    engine.dispose()
    assert "ix_ledger_e2e_bin" in plan


def test_sqlite_reads_a_bin_from_the_index(tmp_path: Any) -> None:
    """The read model's bin expression is the index's: SQLite searches the index for one bin (`<expr>=?`)
    rather than scanning all of it, which it would do silently if the two drifted apart."""
    engine = filled(f"sqlite:///{tmp_path / 'l.db'}")
    walks: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _seen(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "INDEXED BY" in statement:
            walks.append(statement)

    window = Window(DAY, DAY + timedelta(days=1), rollup=False)
    with engine.connect() as connection:
        exact(connection, window, "e2e", (50,))
        exact(connection, Window(DAY, DAY + timedelta(days=1), team="a", rollup=False), "ttft", (50,))
        assert len(walks) == 2
        for walk in list(walks):
            plan = " ".join(str(r[-1]) for r in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {walk}"))
            assert "_bin (<expr>=?" in plan, plan
    engine.dispose()
