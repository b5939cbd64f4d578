"""The batch worker's look for ended jobs to settle (`progress.settle_finished`, every 60 passes) reads only the
jobs without their lines' counts, through the partial index of 0030. Before, its query (ended, and no counts or
any line row) read every ended job kept, each with a look at its lines: 400 settled jobs, 400 rows read to find
the 2 that needed it, growing with every job run until its files expired."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from margin.batches import progress
from margin.ledger import db
from margin.ledger.models import batches

NOW = datetime(2026, 12, 7, tzinfo=UTC)
SETTLED = 400


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite:///{tmp_path / 's.db'}" if request.param == "sqlite" else request.getfixturevalue("fresh_postgres")
    db.upgrade(url)
    made = db.make_async_engine(url)
    yield made
    await made.dispose()


def _job(batch_id: str, status: str, counts: dict[str, int] | None = None) -> dict[str, Any]:
    """A job's row; without `counts`, none (SQL NULL: a JSON column's None would be JSON `null`)."""
    return {
        "id": batch_id, "key_id": "k", "status": status, "created_at": NOW, "expires_at": NOW + timedelta(days=1),
        "endpoint": "/v1/chat/completions", "completion_window": "24h", "tags": {}, "input_file_id": "f",
        **({} if counts is None else {"line_counts": counts}),
    }  # fmt: skip


async def _statement(engine: AsyncEngine) -> tuple[str, Any]:
    """The first statement `settle_finished` runs (its look for jobs to settle), with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        seen.append((statement, parameters))

    sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        assert await progress.settle_finished(engine) == 2
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", record)
    return seen[0]


async def test_the_look_for_jobs_to_settle_reads_only_those(engine: AsyncEngine) -> None:
    settled = [_job(f"batch_{n:04d}", "completed", {"done": 1}) for n in range(SETTLED)]
    unsettled = [_job("batch_old1", "completed"), _job("batch_old2", "expired")]  # an older release ended them
    async with engine.begin() as connection:
        await connection.execute(batches.insert(), settled)
        await connection.execute(batches.insert(), [*unsettled, _job("batch_run", "in_progress")])
        if engine.dialect.name == "postgresql":
            await connection.exec_driver_sql("ANALYZE batches")
    statement, parameters = await _statement(engine)
    async with engine.begin() as connection:  # two more to settle, for the plan's count of what it reads
        await connection.execute(batches.insert(), [_job("batch_old3", "failed"), _job("batch_old4", "cancelled")])
        if engine.dialect.name == "sqlite":
            plan = [row[-1] for row in await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)]
            assert any("ix_batches_unsettled" in step for step in plan), plan  # before: SCAN batches
            assert not any(step.startswith("SCAN") for step in plan), plan
        else:  # the index must be usable; then every row a scan of `batches` fetched or filtered out is counted
            await connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            explain = f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}"
            plan = (await connection.exec_driver_sql(explain, parameters)).scalar_one()
            read = _rows_read(plan[0]["Plan"] if isinstance(plan, list) else plan)
            assert read == 2, plan  # the two to settle; before: 404 (every ended job read, its lines looked for)
    async with engine.connect() as connection:
        counted = await connection.execute(sa.select(batches.c.id).where(batches.c.line_counts.is_(None)))
        # the first two settled; the running job's are its own
        assert sorted(counted.scalars()) == ["batch_old3", "batch_old4", "batch_run"]


async def test_a_job_deleted_after_the_look_is_skipped(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job that expiry deletes between the look for jobs to settle and its own transaction is skipped; the
    others on the page are settled. Before, `.one()` raised NoResultFound and the whole page was lost."""
    async with engine.begin() as connection:
        await connection.execute(batches.insert(), [_job("batch_old1", "completed"), _job("batch_old2", "expired")])
    look = progress.unsettled

    def with_a_vanished_job(limit: int) -> Any:  # the look found it; it is gone by its transaction
        found = look(limit).subquery()
        return sa.union_all(sa.select(sa.literal("batch_gone").label("id")), sa.select(found.c.id))

    monkeypatch.setattr(progress, "unsettled", with_a_vanished_job)
    assert await progress.settle_finished(engine) == 3
    async with engine.connect() as connection:
        left = await connection.execute(sa.select(batches.c.id).where(batches.c.line_counts.is_(None)))
        assert list(left.scalars()) == []  # both settled


def _rows_read(node: dict[str, Any]) -> int:
    """Rows the scans of `batches` in a PostgreSQL plan returned or removed by their filters."""
    own = 0
    if node.get("Relation Name") == "batches":
        loops = int(node.get("Actual Loops", 1))
        own = (int(node.get("Actual Rows", 0)) + int(node.get("Rows Removed by Filter", 0))) * loops
    return own + sum(_rows_read(child) for child in node.get("Plans", []))


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_0030_adds_the_partial_index_and_its_downgrade_drops_it(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'i.db'}" if dialect == "sqlite" else request.getfixturevalue("fresh_postgres")

    def indexes() -> dict[str, Any]:
        engine = db.make_sync_engine(url)
        try:
            with engine.connect() as connection:
                return {str(ix["name"]): ix for ix in sa.inspect(connection).get_indexes("batches")}
        finally:
            engine.dispose()

    db.upgrade(url)
    found = indexes()["ix_batches_unsettled"]
    assert found["column_names"] == ["status"]
    where = found.get("dialect_options", {}).get(f"{dialect}_where")
    assert where is None or "line_counts is null" in str(where).lower()  # SQLite's reflection may leave it out
    db.downgrade(url, "0029")
    assert "ix_batches_unsettled" not in indexes()
    db.upgrade(url)
    assert "ix_batches_unsettled" in indexes()
