"""A worker that lost a job's lease stops dispatching its lines: with several workers and a database outage
longer than `batches.lease_s`, another worker may take the job (`progress.claim`) while the first still runs
it. Before, `_Job.run` never looked at the lease and went on starting lines that the new holder runs too.

What this does not cover: a real outage with two `margin serve` workers (too slow for CI); the takeover is
written into the job's row here, as a second worker's `claim` would write it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from margin.batches import progress
from margin.ledger import db
from margin.ledger.models import batch_lines, batches, ledger
from tests.batches.helpers import jsonl, line, sdk, wait_final
from tests.helpers import fake_settings, gateway

LINES = 8


async def _lines(engine: AsyncEngine, batch_id: str) -> list[Any]:
    async with engine.connect() as connection:
        query = sa.select(batch_lines.c.status, batch_lines.c.attempts).where(batch_lines.c.batch_id == batch_id)
        return list((await connection.execute(query)).all())


async def _lease(engine: AsyncEngine, batch_id: str, owner: str | None, until: datetime | None) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            batches.update().where(batches.c.id == batch_id).values(lease_owner=owner, lease_until=until)
        )


async def test_a_worker_that_lost_the_lease_starts_no_more_lines(tmp_path: Path) -> None:
    settings = fake_settings(
        tmp_path / "ledger.db",
        backends={"fake": {"kind": "fake", "output_tokens": 5, "region": "eu", "ttft_ms": 2000}},
        batches={"poll_s": 0.02, "objective": "asap", "concurrency": 2},
    )
    async with gateway(settings) as gw:
        client, engine = sdk(gw), gw.services.engine
        upload = await client.files.create(
            file=("in.jsonl", jsonl(*(line(f"r{n}") for n in range(LINES)))), purpose="batch"
        )
        batch = await client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        for _ in range(500):
            if sum(status == "running" for status, _ in await _lines(engine, batch.id)) == 2:
                break
            await asyncio.sleep(0.01)
        await _lease(engine, batch.id, "another-worker", datetime.now(UTC) + timedelta(hours=1))  # it took the job
        for _ in range(3000):  # the two in flight land (2 s each; seconds on a loaded machine)
            if sum(status == "done" for status, _ in await _lines(engine, batch.id)) == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # 25 of the worker's passes: before, the next lines started in the first
        lines = await _lines(engine, batch.id)
        assert sorted(lines) == [("done", 1)] * 2 + [("pending", 0)] * (LINES - 2)  # recorded, none started since
        assert (await client.batches.retrieve(batch.id)).status == "in_progress"

        await _lease(engine, batch.id, None, None)  # the other worker gave it back: this one resumes it
        done = await wait_final(client, batch.id)
        assert done.status == "completed" and done.request_counts is not None
        assert done.request_counts.completed == LINES
        async with engine.connect() as connection:
            ids = (await connection.execute(sa.select(ledger.c.request_id).where(ledger.c.batch_id == batch.id))).all()
        assert len(ids) == len({row[0] for row in ids}) == LINES  # each line ran once


async def test_starting_lines_needs_the_lease(tmp_path: Path) -> None:
    """The guard in the transaction that starts lines (`progress.start_lines`): the check of the row before
    (`progress.holds`) is not enough alone, the lease may be taken between the two."""
    url = f"sqlite:///{tmp_path / 'lease.db'}"
    db.upgrade(url)
    engine = db.make_async_engine(url)
    now = datetime(2026, 12, 7, tzinfo=UTC)
    job = {"endpoint": "/v1/chat/completions", "completion_window": "24h", "tags": {}, "input_file_id": "file-x"}
    async with engine.begin() as connection:
        await connection.execute(
            batches.insert().values(id="batch_x", status="in_progress", created_at=now, expires_at=now, **job)
        )
        await connection.execute(
            batch_lines.insert(),
            [
                {"batch_id": "batch_x", "line": n, "custom_id": f"c{n}", "body": "{}", "status": "pending"}
                for n in (1, 2)
            ],
        )
    assert await progress.claim(engine, "w1", now, 30.0) == ["batch_x"]
    assert await progress.start_lines(engine, "batch_x", [(1, 1)], "w2", now) == {}  # not its lease
    later = now + timedelta(seconds=31)
    assert await progress.start_lines(engine, "batch_x", [(1, 1)], "w1", later) == {}  # renewals failed: ran out
    assert list(await progress.start_lines(engine, "batch_x", [(1, 1)], "w1", now)) == [1]  # held: started
    assert await progress.claim(engine, "w2", later, 30.0) == ["batch_x"]  # another worker takes it
    assert await progress.start_lines(engine, "batch_x", [(2, 1)], "w1", now) == {}  # the first starts no more
    assert sorted(await _lines(engine, "batch_x")) == [("pending", 0), ("running", 1)]
    async with engine.connect() as connection:
        taken = (await connection.execute(sa.select(batches).where(batches.c.id == "batch_x"))).one()
    assert progress.holds(taken, "w2", later) and not progress.holds(taken, "w1", later)
    await engine.dispose()
