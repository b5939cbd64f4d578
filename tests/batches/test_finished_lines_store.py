"""A job that ends keeps its lines' counts by status on its row (`batches.line_counts`) and its `batch_lines`
rows are deleted in the transaction that ends it, on SQLite and PostgreSQL: a crash (an exception) midway
leaves the job, its lines and its refused lines as they were and no file; a job with a line still open is not
ended; workers and a cancel that race end it once; the counts never change after it ended. Revision 0029 does
the same for jobs that ended before it, and a worker's first passes for those an older release ends later.
Before, every finished job's line rows stayed, counted against `batches.max_stored_bytes_per_key` for ever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from margin.batches import outputs, progress, quota, store
from margin.errors import Conflict
from margin.ledger import db
from margin.ledger.models import batch_errors, batch_file_parts, batch_files, batch_lines, batches

NOW = datetime(2026, 12, 7, tzinfo=UTC)
JOB = {"endpoint": "/v1/chat/completions", "completion_window": "24h", "tags": {"team": "t"}, "input_file_id": "f"}
PLAN = {"objective": "asap", "windows": []}
STATUSES = ("done", "done", "done", "failed", "expired")  # lines 1 to 5; line 6 refused at validation
COUNTS = {"done": 3, "failed": 1, "expired": 1}
JOBS_0029 = 520  # more than a page of 0029's (500)
REFUSED = {"line": 6, "custom_id": None, "code": "invalid_json", "message": "no", "param": None}


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite:///{tmp_path / 'f.db'}" if request.param == "sqlite" else request.getfixturevalue("fresh_postgres")
    db.upgrade(url)
    made = db.make_async_engine(url)
    yield made
    await made.dispose()


def _line(batch_id: str, number: int, status: str) -> dict[str, Any]:
    answered = status == "done"
    return {
        "batch_id": batch_id,
        "line": number,
        "custom_id": f"c{number}",
        "body": '{"model": "m"}',
        "status": status,
        "attempts": 1,
        "request_id": f"r{number}",
        "status_code": 200 if answered else None,
        "response": '{"ok": true}' if answered else None,
        "error": None if answered else {"code": status, "message": "x"},
    }


async def _job(engine: AsyncEngine, batch_id: str, statuses: tuple[str, ...] = STATUSES) -> None:
    done = statuses.count("done")
    async with engine.begin() as connection:
        await connection.execute(
            batches.insert().values(
                id=batch_id, key_id="k", status="in_progress", created_at=NOW, expires_at=NOW + timedelta(days=1),
                total=len(statuses) + 1, completed=done, failed=len(statuses) + 1 - done,
                errors=[REFUSED], plan=PLAN, stored_bytes=50_000, **JOB,
            )
        )  # fmt: skip
        await connection.execute(batch_lines.insert(), [_line(batch_id, n, s) for n, s in enumerate(statuses, 1)])
        await connection.execute(batch_errors.insert().values(batch_id=batch_id, line=6, error=REFUSED))


async def _state(engine: AsyncEngine, batch_id: str) -> dict[str, Any]:
    async with engine.connect() as connection:
        job = (await connection.execute(sa.select(batches).where(batches.c.id == batch_id))).one()

        async def count(table: sa.Table, *where: Any) -> int:
            return int(await connection.scalar(sa.select(sa.func.count()).select_from(table).where(*where)) or 0)

        return {
            "job": job,
            "lines": await count(batch_lines, batch_lines.c.batch_id == batch_id),
            "refused": await count(batch_errors, batch_errors.c.batch_id == batch_id),
            "files": await count(batch_files),
            "parts": await count(batch_file_parts),
        }


def _row_alone(job: Any) -> int:
    return quota.job_row_bytes(job.meta, job.tags, job.errors, job.plan)


async def test_ending_deletes_the_lines_and_keeps_their_counts_once(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _job(engine, "batch_a")
    original = outputs.FileWriter.close

    async def killed(self: outputs.FileWriter) -> str | None:
        if self.name == "error":  # the output file's parts and row are written: the process dies here
            raise RuntimeError("killed mid-finalize")
        return await original(self)

    monkeypatch.setattr(outputs.FileWriter, "close", killed)
    with pytest.raises(RuntimeError):
        await progress.finalize(engine, "batch_a", "completed", NOW)
    cut = await _state(engine, "batch_a")
    assert (cut["job"].status, cut["job"].line_counts, cut["job"].stored_bytes) == ("in_progress", None, 50_000)
    assert (cut["lines"], cut["refused"], cut["files"], cut["parts"]) == (5, 1, 0, 0)  # nothing of it stayed
    monkeypatch.setattr(outputs.FileWriter, "close", original)

    assert await progress.finalize(engine, "batch_a", "completed", NOW)  # finalized again, as after a restart
    done = await _state(engine, "batch_a")
    job = done["job"]
    assert (job.status, job.line_counts, done["lines"], done["refused"], done["files"]) == (
        "completed",
        COUNTS,
        0,
        0,
        2,
    )
    assert job.stored_bytes == _row_alone(job) < quota.ROW_BYTES + 200  # its row alone
    assert await store.line_counts(engine, job) == COUNTS  # what retrieve shows as margin.lines
    assert (job.total, job.completed, job.failed) == (6, 3, 3)

    late = progress.Outcome("done", 200, b'{"late": true}')  # a worker that lost the lease lands a line
    assert await progress.finish_lines(engine, "batch_a", [(1, 1, late)], NOW) == 0
    assert await progress.close_pending(engine, "batch_a", "cancelled", NOW) == 0
    assert await progress.reset_running(engine, "batch_a", 3, NOW) == 0
    assert not await progress.finalize(engine, "batch_a", "completed", NOW)  # once
    assert await progress.settle_finished(engine) == 0  # nothing left to settle
    after = await _state(engine, "batch_a")
    assert after["job"]._mapping == job._mapping and (after["lines"], after["files"]) == (0, 2)  # never changes


async def test_a_job_with_a_line_still_open_is_not_ended(engine: AsyncEngine) -> None:
    await _job(engine, "batch_o", ("done", "running", "pending"))
    assert not await progress.finalize(engine, "batch_o", "completed", NOW)
    left = await _state(engine, "batch_o")
    assert (left["job"].status, left["job"].line_counts, left["lines"], left["refused"]) == ("in_progress", None, 3, 1)
    assert (left["files"], left["parts"]) == (0, 0)


async def test_workers_and_a_cancel_racing_end_the_job_once(engine: AsyncEngine) -> None:
    """Two workers' finalize and a cancel at once: one finalize ends it, or the cancel wins and both roll back
    (SQLite may refuse a transaction whose snapshot another's commit made stale: rolled back too, and the worker
    tries again on its next pass); either way one pair of files, no line row, the counts right, once."""
    await _job(engine, "batch_r")
    raced = await asyncio.gather(
        progress.finalize(engine, "batch_r", "completed", NOW),
        progress.finalize(engine, "batch_r", "completed", NOW),
        store.cancel(engine, "batch_r", store.Owner("k"), NOW),
        return_exceptions=True,
    )
    failures = [o for o in raced if isinstance(o, BaseException)]
    assert all(isinstance(o, (Conflict, sa.exc.OperationalError)) for o in failures), raced
    assert sum(o is True for o in raced[:2]) <= 1
    left = (await _state(engine, "batch_r"))["job"]
    if left.status in store.ACTIVE:  # the cancel came first, or the race rolled both back: the next pass
        assert await progress.finalize(
            engine, "batch_r", "cancelled" if left.status == "cancelling" else "completed", NOW
        )
    done = await _state(engine, "batch_r")
    assert done["job"].status in ("completed", "cancelled") and done["job"].line_counts == COUNTS
    assert (done["lines"], done["refused"], done["files"]) == (0, 0, 2)


async def test_jobs_an_older_release_ended_are_settled_once(engine: AsyncEngine) -> None:
    """What a job that an older release (a replica not yet upgraded) ended looks like: its line rows kept, no
    counts on its row, its lines still counted. Settling counts them onto its row and deletes them; a job whose
    counts are there is not read again: its counts were written in the transaction that deleted its rows (its rows
    are left here by hand, a state no end makes), so the look reads only the jobs without counts (0030's index)."""
    await _job(engine, "batch_old")
    await _job(engine, "batch_cut")
    await _job(engine, "batch_run")
    async with engine.begin() as connection:
        ended = {"status": "completed", "completed_at": NOW}
        await connection.execute(batches.update().where(batches.c.id == "batch_old").values(**ended))
        cut = {**ended, "line_counts": {"done": 5}}  # what its end wrote: never changed after
        await connection.execute(batches.update().where(batches.c.id == "batch_cut").values(**cut))
    old = (await _state(engine, "batch_old"))["job"]
    assert await store.line_counts(engine, old) == COUNTS  # counted from its rows until then
    await _job(engine, "batch_old2")
    async with engine.begin() as connection:
        await connection.execute(batches.update().where(batches.c.id == "batch_old2").values(**ended))
    assert await progress.settle_finished(engine, limit=1) == 1  # a page at a time
    assert await progress.settle_finished(engine) == 1
    assert await progress.settle_finished(engine) == 0
    for batch_id in ("batch_old", "batch_old2"):
        state = await _state(engine, batch_id)
        assert (state["job"].line_counts, state["lines"], state["refused"]) == (COUNTS, 0, 0)
        assert state["job"].stored_bytes == _row_alone(state["job"])
    kept = await _state(engine, "batch_cut")
    assert (kept["job"].line_counts, kept["lines"], kept["job"].stored_bytes) == ({"done": 5}, 5, 50_000)  # not read
    running = await _state(engine, "batch_run")  # a running job's lines are its own
    assert (running["job"].line_counts, running["lines"], running["job"].stored_bytes) == (None, 5, 50_000)


@pytest.mark.parametrize("ledger", ["sqlite", "postgresql"])
def test_0029_settles_the_jobs_that_ended_before_it(
    ledger: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if ledger == "sqlite" else str(request.getfixturevalue("fresh_postgres"))
    db.upgrade(url, "0028")
    engine = db.make_sync_engine(url)
    old = [c for c in batches.c if c.name != "line_counts"]  # the table as 0028 left it
    plain: dict[str, Any] = {
        "status": "completed",
        "errors": None,
        "created_at": NOW,
        "expires_at": NOW,
        "stored_bytes": 9_999,
        **JOB,
    }
    with engine.begin() as connection:
        jobs = [
            {**plain, "id": f"batch_{n:04d}", "status": "in_progress" if n == 7 else plain["status"]}
            for n in range(JOBS_0029)
        ]
        jobs.append({**plain, "id": "batch_invalid", "status": "failed", "errors": [REFUSED]})  # no line
        connection.execute(sa.insert(sa.table("batches", *(sa.column(c.name, c.type) for c in old))), jobs)
        every = [_line(f"batch_{n:04d}", i, s) for n in range(JOBS_0029) for i, s in enumerate(STATUSES, 1)]
        connection.execute(batch_lines.insert(), every)
    engine.dispose()
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    with engine.connect() as connection:
        rows = {r.id: r for r in connection.execute(sa.select(batches))}
        query = sa.select(batch_lines.c.batch_id, sa.func.count()).group_by(batch_lines.c.batch_id)
        lines = {str(batch_id): int(n) for batch_id, n in connection.execute(query)}
    assert lines == {"batch_0007": 5}  # the running job's lines only
    for batch_id, row in rows.items():
        if batch_id == "batch_0007":
            assert (row.line_counts, row.stored_bytes) == (None, 9_999)
            continue
        assert row.line_counts == ({} if batch_id == "batch_invalid" else COUNTS), batch_id
        assert row.stored_bytes == _row_alone(row) < 9_999
    db.downgrade(url, "0028")
    with engine.connect() as connection:
        assert "line_counts" not in {c["name"] for c in sa.inspect(connection).get_columns("batches")}
        assert connection.scalar(sa.select(sa.func.count()).select_from(sa.table("batches"))) == JOBS_0029 + 1
    engine.dispose()
