"""`batches.max_stored_bytes_per_key` bounds everything a key makes the gateway store: its files (uploads,
output and error files), its jobs' rows, and its unfinished jobs' lines and refused lines. Before, only an
upload was checked, against the key's files: a job's output counted only at the next upload and its refused
lines not at all, so one small file of bad lines could back job after job, each storing its rows.
`batches.max_active_jobs_per_key` bounds the jobs a key has not yet finished."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import openai
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from margin.api.errors import error_body, status_of
from margin.batches import progress, quota, store
from margin.batches.jsonl import validate
from margin.errors import MarginError
from margin.ledger import db
from margin.ledger.models import batch_errors, batch_lines, batches
from margin.specs import BatchConfig
from tests.batches.helpers import jsonl, line, run_job, sdk
from tests.helpers import fake_settings, gateway

NOW = datetime(2026, 12, 5, tzinfo=UTC)
OWNER = store.Owner("k")
BAD = b"not json\n" * 100  # 900 bytes, 100 refused lines: ~160 bytes of JSON each once stored
ENDPOINT: Final = "/v1/chat/completions"


async def _engine(tmp_path: Path) -> AsyncEngine:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    db.upgrade(url)
    return db.make_async_engine(url)


async def _job(engine: AsyncEngine, file_id: str, limits: BatchConfig) -> Any:
    return await store.add_batch(engine, OWNER, file_id, ENDPOINT, ("24h", 24), None, {}, NOW, limits)


async def _refused(engine: AsyncEngine, batch_id: str) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(sa.select(sa.func.count()).where(batch_errors.c.batch_id == batch_id))
    return int(count or 0)


async def _used(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return await quota.used(connection, OWNER.key_id)


def _refusal(exc: pytest.ExceptionInfo[MarginError]) -> tuple[int, Any]:
    return status_of(exc.value), error_body(exc.value)["error"]["code"]


async def test_a_job_whose_refused_lines_would_pass_the_quota_fails_storing_none(tmp_path: Path) -> None:
    engine = await _engine(tmp_path)
    limits = BatchConfig(max_stored_bytes_per_key=1 << 20)
    content = BAD + jsonl(line("ok"))  # one valid line: a job with none ends at validation, holding no row
    upload = await store.add_file(engine, OWNER, "bad.jsonl", content, 101, limits.max_stored_bytes_per_key, NOW)
    assert await _used(engine) == quota.ROW_BYTES + len(content)
    lines, errors = validate(content, ENDPOINT, lambda model: model)
    assert (len(lines), len(errors)) == (1, 100)

    first = await _job(engine, upload.id, limits)
    before = await _used(engine)
    assert await progress.save_validation(engine, first.id, lines, errors, None, NOW, 1 << 20)
    stored = (await store.get_batch(engine, first.id, OWNER)).stored_bytes
    refused_json = sum(quota.size(e.to_json()) for e in errors)
    assert stored > 2 * refused_json  # its rows and the 100 it lists, each counted
    assert await _used(engine) == before - first.stored_bytes + stored and await _refused(engine, first.id) == 100

    second = await _job(engine, upload.id, limits)  # room for its row and a copy of its ~1 KB input
    limit = await _used(engine) + stored // 2  # not for its 100 refused lines
    assert not await progress.save_validation(engine, second.id, lines, errors, None, NOW, limit)
    failed = await store.get_batch(engine, second.id, OWNER)
    assert failed.status == "failed" and failed.failed_at is not None and failed.total == 0
    assert [e["code"] for e in failed.errors] == ["storage_quota_exceeded"]
    assert await _refused(engine, second.id) == 0  # stored none of them
    assert failed.stored_bytes == quota.job_row_bytes(None, {}, failed.errors) < quota.ROW_BYTES + 1024
    await engine.dispose()


async def test_a_new_job_is_refused_past_the_quota_or_the_active_jobs(tmp_path: Path) -> None:
    engine = await _engine(tmp_path)
    upload = await store.add_file(engine, OWNER, "bad.jsonl", BAD, 100, 1 << 20, NOW)
    room = await _used(engine) + quota.job_row_bytes(None, {}) + len(BAD)  # its row and a copy of its input
    with pytest.raises(MarginError) as over:
        await _job(engine, upload.id, BatchConfig(max_stored_bytes_per_key=room - 1))
    assert _refusal(over) == (413, "storage_quota_exceeded")
    limits = BatchConfig(max_stored_bytes_per_key=1 << 20, max_active_jobs_per_key=2)
    jobs = [await _job(engine, upload.id, limits) for _ in range(2)]
    with pytest.raises(MarginError) as busy:
        await _job(engine, upload.id, limits)
    assert _refusal(busy) == (429, "too_many_active_batches")
    await store.cancel(engine, jobs[0].id, OWNER, NOW)
    with pytest.raises(MarginError):  # cancelling: not finished yet
        await _job(engine, upload.id, limits)
    async with engine.begin() as connection:
        await connection.execute(batches.update().where(batches.c.id == jobs[0].id).values(status="cancelled"))
    assert (await _job(engine, upload.id, limits)).status == "validating"
    other = store.Owner("other")  # another key's jobs are its own
    mine = await store.add_file(engine, other, "bad.jsonl", BAD, 100, 1 << 20, NOW)
    assert (await store.add_batch(engine, other, mine.id, ENDPOINT, ("1h", 1), None, {}, NOW, limits)).id
    await engine.dispose()


async def test_a_jobs_answers_are_kept_and_counted_and_its_copies_freed(db_path: Path) -> None:
    """A running job's answers are always kept (they were paid for) and counted as they land: this job's take
    its key past the quota, and its next upload and job are refused until a file is deleted. Once the job
    ends, its output and error files hold its answers and refused lines, which its rows no longer keep."""
    content = jsonl(*(line(f"r{n}", "hello " * 20) for n in range(4)), b"{")
    limit = 4 * quota.ROW_BYTES + 4 * len(content)  # the upload, the job's row and its lines; not its answers
    settings = fake_settings(
        db_path,
        backends={"fake": {"kind": "fake", "output_tokens": 500, "region": "eu"}},
        batches={"poll_s": 0.02, "objective": "asap", "max_stored_bytes_per_key": limit},
    )
    async with gateway(settings) as gw:
        client = sdk(gw)
        done = await run_job(client, content)
        assert done.status == "completed" and done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (4, 1)
        assert done.output_file_id is not None and done.error_file_id is not None
        output = (await client.files.content(done.output_file_id)).content
        assert output.count(b"\n") == 4 and len(output) > limit  # every answer kept, past the quota
        engine = gw.services.engine
        async with engine.connect() as connection:
            used = await quota.used(connection, None)
            job = (await connection.execute(sa.select(batches).where(batches.c.id == done.id))).one()
            kept = (await connection.execute(sa.select(batch_lines).where(batch_lines.c.batch_id == done.id))).all()
        assert used > limit and await _refused(engine, done.id) == 0  # the error file holds the refused line
        assert kept == [] and job.line_counts == {"done": 4}  # the files hold its lines; its row, their counts
        assert job.stored_bytes == quota.job_row_bytes(job.meta, job.tags, job.errors, job.plan)  # its row alone
        more = ("more.jsonl", jsonl(line("x")))
        with pytest.raises(openai.APIStatusError) as upload:
            await client.files.create(file=more, purpose="batch")
        with pytest.raises(openai.APIStatusError) as job_refused:
            await client.batches.create(input_file_id=done.input_file_id, endpoint=ENDPOINT, completion_window="24h")
        for refused in (upload, job_refused):
            assert (refused.value.status_code, refused.value.code) == (413, "storage_quota_exceeded")
        await client.files.delete(done.output_file_id)
        assert (await client.files.create(file=more, purpose="batch")).bytes == len(more[1])


@pytest.mark.parametrize("ledger", ["sqlite", "postgresql"])
def test_the_migration_counts_what_jobs_store_and_frees_what_finished_ones_copied(
    ledger: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if ledger == "sqlite" else str(request.getfixturevalue("fresh_postgres"))
    db.upgrade(url, "0012")
    engine = db.make_sync_engine(url)
    job = {"input_file_id": "f", "endpoint": ENDPOINT, "completion_window": "24h", "tags": {}}
    line_row = {"custom_id": "c", "body": "b" * 1000, "status": "done", "response": "r" * 3000}
    error = {"line": 2, "custom_id": None, "code": "invalid_json", "message": "m" * 500, "param": None}
    with engine.begin() as connection:
        for batch_id, status in (("batch_done", "completed"), ("batch_running", "in_progress")):
            connection.execute(
                batches.insert().values(
                    id=batch_id, key_id="k", status=status, created_at=NOW, expires_at=NOW + timedelta(days=1), **job
                )
            )
            connection.execute(batch_lines.insert().values(batch_id=batch_id, line=1, **line_row))
            connection.execute(batch_errors.insert().values(batch_id=batch_id, line=2, error=error))
    engine.dispose()
    db.upgrade(url, "0028")  # 0029 deletes a finished job's line rows (test_finished_lines_store.py)
    engine = db.make_sync_engine(url)
    with engine.connect() as connection:
        stored = dict(connection.execute(sa.select(batches.c.id, batches.c.stored_bytes)).all())
        kept = dict(connection.execute(sa.select(batch_lines.c.batch_id, batch_lines.c.body)).all())
        refused = connection.execute(sa.select(batch_errors.c.batch_id)).scalars().all()
    engine.dispose()
    assert kept == {"batch_done": "", "batch_running": "b" * 1000} and refused == ["batch_running"]
    assert quota.ROW_BYTES < stored["batch_done"] < quota.ROW_BYTES + 1000  # its row and what its line keeps
    assert stored["batch_running"] > quota.ROW_BYTES + 1000 + 3000 + 500  # its line's body and answer, its error


@pytest.mark.parametrize("ledger", ["sqlite", "postgresql"])
async def test_uploads_at_the_same_moment_cannot_each_pass_the_quota(
    ledger: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Twelve uploads of one key at once, with room for three: exactly three are stored and the others refused
    (413). Without the key's lock (`quota.lock`) several saw the same sum: all twelve were stored on PostgreSQL,
    four on SQLite."""
    url = f"sqlite:///{tmp_path / 'c.db'}" if ledger == "sqlite" else str(request.getfixturevalue("fresh_postgres"))
    db.upgrade(url)
    engine = db.make_async_engine(url)
    content = b'{"custom_id": "a"}\n' * 500  # 9.5 KB
    limit = 3 * (quota.ROW_BYTES + len(content)) + 100
    try:
        outcomes = await asyncio.gather(
            *(store.add_file(engine, OWNER, f"f{i}.jsonl", content, 500, limit, NOW) for i in range(12)),
            return_exceptions=True,
        )
        assert sum(not isinstance(o, BaseException) for o in outcomes) == 3, outcomes
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert all(isinstance(o, MarginError) and status_of(o) == 413 for o in refused), refused
        assert await _used(engine) <= limit
    finally:
        await engine.dispose()
