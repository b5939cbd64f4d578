"""Files expire as OpenAI's do, with the official `openai` SDK over a real socket: an upload's `expires_after`
and a job's `output_expires_after` (`{anchor: created_at, seconds: 3600 to 2592000}`, else a 400 naming the
param) set the file's `expires_at`; an expired file answers 404 like a deleted one at once, is not listed nor
counted in the key's quota, and the batch worker's sweep deletes its rows; a job created on it before it expired
goes on. Both fields were accepted and ignored before (`expires_at` null, files kept until deleted); an upload
without `expires_after` now expires after 30 days (batches.upload_expires_after_s), as OpenAI's.

The shortest expiry is an hour: a file expires here by its `expires_at` written in the past, or by the worker's
clock (`BatchRunner.clock`) moved past it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
from openai.types.file_create_params import ExpiresAfter

from margin.app import build_app
from margin.batches import expiry, quota, store
from margin.errors import NotFound
from margin.ledger import db
from margin.ledger.models import batch_file_parts, batch_files
from margin.services import Services
from tests.batches.helpers import batch_settings, entries, jsonl, line, run_job, wait_final
from tests.helpers import live_server

HOUR: ExpiresAfter = {"anchor": "created_at", "seconds": 3600}


@dataclass
class Served:
    client: openai.AsyncOpenAI
    services: Services
    runner: Any
    url: str


@pytest.fixture
async def served(db_path: Path) -> AsyncIterator[Served]:
    app = build_app(batch_settings(db_path, max_stored_bytes_per_key=20_000))
    async with live_server(app) as url:
        client = openai.AsyncOpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        yield Served(client, app.state.services, app.state.batch_runner, url)
        await client.close()


async def _expire(services: Services, file_id: str) -> None:
    """The file's expiry, as if its hour had passed."""
    past = datetime.now(UTC) - timedelta(seconds=1)
    async with services.engine.begin() as connection:
        await connection.execute(batch_files.update().where(batch_files.c.id == file_id).values(expires_at=past))


async def _stored(services: Services, file_id: str) -> tuple[int, int]:
    """(the file's rows, its parts' rows) in the database."""
    async with services.engine.connect() as connection:
        rows = await connection.scalar(sa.select(sa.func.count()).where(batch_files.c.id == file_id))
        parts = await connection.scalar(sa.select(sa.func.count()).where(batch_file_parts.c.file_id == file_id))
    return int(rows or 0), int(parts or 0)


async def test_an_upload_reports_when_it_expires(served: Served) -> None:
    client = served.client
    default = await client.files.create(file=("default.jsonl", jsonl(line("a"))), purpose="batch")
    assert default.expires_at == default.created_at + 2_592_000  # 30 days, as OpenAI's (it was None: kept)
    hour = await client.files.create(file=("hour.jsonl", jsonl(line("a"))), purpose="batch", expires_after=HOUR)
    assert hour.expires_at == hour.created_at + 3600  # it was None
    month: ExpiresAfter = {"anchor": "created_at", "seconds": 2_592_000}
    longest = await client.files.create(file=("m.jsonl", jsonl(line("a"))), purpose="batch", expires_after=month)
    assert longest.expires_at == longest.created_at + 2_592_000
    assert (await client.files.retrieve(hour.id)).expires_at == hour.expires_at
    listed = {f.id: f.expires_at async for f in client.files.list()}
    assert listed == {default.id: default.expires_at, hour.id: hour.expires_at, longest.id: longest.expires_at}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"expires_after[anchor]": "updated_at", "expires_after[seconds]": "3600"}, "expires_after.anchor"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "3599"}, "expires_after.seconds"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"}, "expires_after.seconds"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "an hour"}, "expires_after.seconds"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600.0"}, "expires_after.seconds"),
        ({"expires_after[anchor]": "created_at"}, "expires_after.seconds"),
        ({"expires_after[seconds]": "3600"}, "expires_after.anchor"),
        ({"expires_after": '{"anchor": "created_at", "seconds": 3600}'}, "expires_after"),
    ],
)
async def test_a_bad_expires_after_is_a_400_naming_it(served: Served, fields: dict[str, str], param: str) -> None:
    async with httpx.AsyncClient(base_url=served.url) as http:
        refused = await http.post(
            "/v1/files", data={"purpose": "batch", **fields}, files={"file": ("in.jsonl", jsonl(line("a")))}
        )
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param
        assert (await http.get("/v1/files")).json()["data"] == []  # nothing stored


@pytest.mark.parametrize(
    ("policy", "param"),
    [
        ({"anchor": "completed_at", "seconds": 3600}, "output_expires_after.anchor"),
        ({"anchor": "created_at", "seconds": 60}, "output_expires_after.seconds"),
        ({"anchor": "created_at", "seconds": 2_592_001}, "output_expires_after.seconds"),
        ({"anchor": "created_at", "seconds": 3600.5}, "output_expires_after.seconds"),
        ({"anchor": "created_at", "seconds": "3600"}, "output_expires_after.seconds"),
        ({"anchor": "created_at", "seconds": True}, "output_expires_after.seconds"),
        ({"anchor": "created_at"}, "output_expires_after.seconds"),
        ({"anchor": "created_at", "seconds": 3600, "after": 1}, "output_expires_after.after"),
        ("24h", "output_expires_after"),
    ],
)
async def test_a_bad_output_expires_after_is_a_400_naming_it(served: Served, policy: Any, param: str) -> None:
    client = served.client
    upload = await client.files.create(file=("in.jsonl", jsonl(line("a"))), purpose="batch")
    with pytest.raises(openai.BadRequestError) as refused:
        await client.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            output_expires_after=policy,
        )
    error = refused.value.body
    assert isinstance(error, dict) and error["param"] == param
    assert [b async for b in client.batches.list()] == []


async def test_a_jobs_output_and_error_files_expire_as_asked(served: Served) -> None:
    client = served.client
    upload = await client.files.create(file=("in.jsonl", jsonl(line("a"), b"{")), purpose="batch")
    batch = await client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 7200},
    )
    done = await wait_final(client, batch.id)
    assert done.output_file_id is not None and done.error_file_id is not None
    for file_id in (done.output_file_id, done.error_file_id):
        written = await client.files.retrieve(file_id)
        assert written.expires_at == written.created_at + 7200  # from the file's creation, not the job's
    read = await client.files.retrieve(upload.id)
    assert read.expires_at == read.created_at + 2_592_000  # an upload's default (batches.upload_expires_after_s)
    kept = await run_job(client, jsonl(line("b")))  # a job that names none: its files are kept
    assert kept.output_file_id is not None
    assert (await client.files.retrieve(kept.output_file_id)).expires_at is None


async def test_an_expired_file_is_gone_before_the_sweep_and_the_sweep_deletes_it(served: Served) -> None:
    client, services = served.client, served.services
    await served.runner.close(grace_s=0)  # no sweep until the tick below
    content = jsonl(*(line(f"r{n}", "x" * 3400) for n in range(2)))  # ~7 KB: two fit the 20,000 bytes, not three
    first = await client.files.create(file=("a.jsonl", content), purpose="batch", expires_after=HOUR)
    second = await client.files.create(file=("b.jsonl", content), purpose="batch")
    with pytest.raises(openai.APIStatusError) as full:
        await client.files.create(file=("c.jsonl", content), purpose="batch")
    assert full.value.status_code == 413
    await _expire(services, first.id)

    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        await client.files.content(first.id)
    with pytest.raises(openai.NotFoundError) as as_input:
        await client.batches.create(input_file_id=first.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert isinstance(as_input.value.body, dict) and as_input.value.body["param"] == "input_file_id"
    assert [f.id async for f in client.files.list()] == [second.id]
    assert await _stored(services, first.id) == (1, 0)  # not swept yet: gone for its key all the same
    third = await client.files.create(file=("c.jsonl", content), purpose="batch")  # its bytes no longer count

    await served.runner.tick()  # the worker's pass: it sweeps a page of expired files
    assert await _stored(services, first.id) == (0, 0)
    async with services.engine.connect() as connection:
        used = await quota.used(connection, None)
    assert used == 2 * (quota.ROW_BYTES + len(content))  # second and third: freed as a delete frees
    assert {f.id async for f in client.files.list()} == {second.id, third.id}


async def test_the_running_worker_sweeps_expired_output_files_and_their_parts(served: Served) -> None:
    client, services, runner = served.client, served.services, served.runner
    upload = await client.files.create(file=("in.jsonl", jsonl(line("a"))), purpose="batch", expires_after=HOUR)
    batch = await client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", output_expires_after=HOUR
    )
    done = await wait_final(client, batch.id)
    output = done.output_file_id
    assert output is not None and await _stored(services, output) == (1, 1)
    runner.clock = lambda: datetime.now(UTC) + timedelta(hours=1, seconds=1)  # the worker sees the hour pass
    runner.wake.set()
    for _ in range(500):  # its next pass, within batches.poll_s (0.02 s)
        if await _stored(services, output) == (0, 0) and await _stored(services, upload.id) == (0, 0):
            break
        await asyncio.sleep(0.02)
    assert await _stored(services, output) == (0, 0) and await _stored(services, upload.id) == (0, 0)
    async with services.engine.connect() as connection:
        used = await quota.used(connection, None)
    assert used == (await store.get_batch(services.engine, batch.id, None)).stored_bytes  # the job's row alone
    assert (await client.batches.retrieve(batch.id)).status == "completed"


async def test_a_job_whose_input_expires_before_validation_is_validated_and_runs(served: Served) -> None:
    """OpenAI's job goes on when its input file expires: the sweep keeps an expired upload while a job waits to
    be validated on it, and the worker validates the job from it; once validated, the job runs on its own copy
    of the lines and the upload is swept. It used to fail with `input_file_missing` (the sweep deleted the
    upload, or the worker's read found it expired)."""
    client, services, runner = served.client, served.services, served.runner
    await runner.close(grace_s=0)  # the job stays `validating` until the worker starts again below
    content = jsonl(line("x"), line("y"))
    upload = await client.files.create(file=("in.jsonl", content), purpose="batch", expires_after=HOUR)
    batch = await client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await _expire(services, upload.id)
    assert await expiry.sweep(services.engine, datetime.now(UTC)) == 0  # a job waits on it: kept
    assert await _stored(services, upload.id) == (1, 0)
    with pytest.raises(openai.NotFoundError):  # gone for its key all the same
        await client.files.retrieve(upload.id)
    runner._stopping = False
    runner.start()  # the worker again: each pass sweeps (keeping the upload) and it validates and runs the job
    done = await wait_final(client, batch.id)
    assert done.status == "completed" and done.errors is None, done  # was failed, input_file_missing
    assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.total) == (2, 2)
    assert done.output_file_id is not None
    answers = entries((await client.files.content(done.output_file_id)).content)
    assert sorted(entry["custom_id"] for entry in answers) == ["x", "y"]
    await expiry.sweep(services.engine, datetime.now(UTC))  # no job waits on it now: swept (here or by the worker)
    assert await _stored(services, upload.id) == (0, 0)
    assert (await client.batches.retrieve(batch.id)).status == "completed"


async def test_a_job_whose_input_is_deleted_before_validation_fails(served: Served) -> None:
    client, services, runner = served.client, served.services, served.runner
    await runner.close(grace_s=0)  # the job stays `validating` until validated below
    upload = await client.files.create(file=("in.jsonl", jsonl(line("x"))), purpose="batch")
    batch = await client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await client.files.delete(upload.id)
    await runner._validate(await store.get_batch(services.engine, batch.id, None))
    done = await client.batches.retrieve(batch.id)
    assert done.status == "failed" and done.errors is not None and done.errors.data is not None
    (error,) = done.errors.data
    assert error.code == "input_file_missing" and error.message is not None and "deleted" in error.message


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_expiry_is_read_and_swept_alike_on_both_databases(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}" if dialect == "sqlite" else request.getfixturevalue("fresh_postgres")
    db.upgrade(url)
    engine = db.make_async_engine(url)
    owner, now = store.Owner("k"), datetime(2026, 12, 6, 12, tzinfo=UTC)
    try:
        hour = await store.add_file(engine, owner, "h.jsonl", b"{}\n", 1, 1 << 20, now, 3600)
        kept = await store.add_file(engine, owner, "k.jsonl", b"{}\n", 1, 1 << 20, now)
        assert store.utc(hour.expires_at) == now + timedelta(hours=1) and kept.expires_at is None
        later = now + timedelta(hours=1)
        assert (await store.get_file(engine, hour.id, owner, later - timedelta(seconds=1))).id == hour.id
        with pytest.raises(NotFound):
            await store.get_file(engine, hour.id, owner, later)
        assert await store.input_content(engine, hour.id) == b"{}\n"  # a job made before it expired reads it
        listed, _ = await store.list_files(engine, owner, store.Window(10), later)
        assert [row.id for row in listed] == [kept.id]
        deleted = await store.add_file(engine, owner, "d.jsonl", b"{}\n", 1, 1 << 20, now, 3600)
        with pytest.raises(NotFound):  # deleted all the same, with the 404 of a file that does not exist
            await store.delete_file(engine, deleted.id, owner, later)
        assert await expiry.sweep(engine, later - timedelta(seconds=1)) == 0
        assert await expiry.sweep(engine, later) == 1  # `hour`; `deleted` is gone already
        assert await expiry.sweep(engine, later) == 0
        assert [row.id for row in (await store.list_files(engine, owner, store.Window(10), now))[0]] == [kept.id]
    finally:
        await engine.dispose()
