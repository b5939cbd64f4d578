"""A finished job's lines stop counting against `batches.max_stored_bytes_per_key` once its output and error
files hold them: deleting the files frees the key's space. Before, each line kept counting ~128 bytes and its
custom_id for ever (five 1,000-line jobs kept 667 KB of a 1 MB quota after every file was deleted, and every
new job then failed `storage_quota_exceeded`)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from margin.batches import quota
from margin.ledger.models import batches
from tests.batches.helpers import jsonl, line, run_job, sdk
from tests.helpers import fake_settings, gateway

LINES = 200
LIMIT = 120_000  # an upload (~50 KB) and a job's copy of it; not also what 200 lines kept (~46 KB) before


async def test_deleting_a_finished_jobs_files_frees_its_lines_space(tmp_path: Path) -> None:
    settings = fake_settings(
        tmp_path / "ledger.db",
        batches={"poll_s": 0.02, "objective": "asap", "concurrency": 16, "max_stored_bytes_per_key": LIMIT},
    )
    content = jsonl(*(line(f"{n:03d}-" + "c" * 96) for n in range(LINES)))
    assert 45_000 < len(content) < 55_000
    async with gateway(settings) as gw:
        client = sdk(gw)
        finished = []
        for _ in range(3):
            done = await run_job(client, content)  # refused 413 from the second on, before
            assert done.status == "completed" and done.request_counts is not None
            assert (done.request_counts.completed, done.request_counts.failed) == (LINES, 0)
            assert done.output_file_id is not None and done.error_file_id is None
            for file_id in (done.input_file_id, done.output_file_id):
                await client.files.delete(file_id)
            finished.append(done.id)
        kept = await client.batches.retrieve(finished[0])  # retrieve still reads its lines' statuses
        assert kept.model_extra is not None and kept.model_extra["margin"]["lines"] == {"done": LINES}
        async with gw.services.engine.connect() as connection:
            used = await quota.used(connection, None)
            jobs = (await connection.execute(sa.select(batches).where(batches.c.id.in_(finished)))).all()
    rows = sum(quota.job_row_bytes(job.meta, job.tags, job.errors, job.plan) for job in jobs)
    assert len(jobs) == 3 and used == rows < 3 * 2 * quota.ROW_BYTES  # no file left, and no line counted
