"""A job's output and error files are written in parts while its lines are read a page at a time, and read
back part by part: the same bytes, in line order, every line in exactly one file, and written once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from margin.batches import outputs, progress, store
from margin.ledger import db
from margin.ledger.models import batch_errors, batch_file_parts, batch_files, batch_lines, batches
from tests.batches.helpers import batch_settings, entries, jsonl, line, run_job, sdk
from tests.helpers import gateway

NOW = datetime(2026, 12, 5, tzinfo=UTC)
REFUSED = (2, 5, 11)  # at validation: never in batch_lines
FAILED = (4, 9, 15, 20)  # ran and ended without an answer


def _lines(batch_id: str) -> list[dict[str, Any]]:
    rows = []
    for number in range(1, 21):
        if number in REFUSED:
            continue
        failed = number in FAILED
        body = {"choices": [{"message": {"content": f"answer {number} " * 20}}]}
        rows.append(
            {
                "batch_id": batch_id,
                "line": number,
                "custom_id": f"c{number}",
                "body": "{}",
                "status": "failed" if failed else "done",
                "attempts": 1,
                "status_code": 502 if failed else 200,
                "response": orjson.dumps({"error": {"code": "x"}} if failed else body).decode(),
                "request_id": f"r{number}",
                "finished_at": NOW,
            }
        )
    return rows


async def _chunks(engine: Any, file_id: str) -> list[bytes]:
    return [chunk async for chunk in store.file_chunks(engine, file_id)]


async def test_files_are_written_and_read_in_parts_in_line_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outputs, "PART_BYTES", 600)  # a few entries a part
    monkeypatch.setattr(outputs, "PAGE_LINES", 3)  # several pages of lines
    url = f"sqlite:///{tmp_path / 'b.db'}"
    db.upgrade(url)
    engine = db.make_async_engine(url)
    errors = [{"line": n, "custom_id": f"bad{n}", "code": "invalid_json", "message": "no"} for n in REFUSED]
    job = {"id": "batch_1", "key_id": "k", "input_file_id": "file-in", "endpoint": "/v1/chat/completions"}
    async with engine.begin() as connection:
        await connection.execute(
            batches.insert().values(
                **job, completion_window="24h", status="in_progress", tags={}, errors=errors[::-1],
                created_at=NOW, expires_at=NOW + timedelta(days=1),
            )
        )  # fmt: skip
        await connection.execute(batch_lines.insert(), _lines("batch_1"))
        await connection.execute(
            batch_errors.insert(), [{"batch_id": "batch_1", "line": e["line"], "error": e} for e in errors]
        )
    assert await progress.finalize(engine, "batch_1", "completed", NOW)
    assert not await progress.finalize(engine, "batch_1", "completed", NOW)  # once
    async with engine.connect() as connection:
        done = (await connection.execute(sa.select(batches).where(batches.c.id == "batch_1"))).one()
        files = {row.id: row for row in await connection.execute(sa.select(batch_files))}
        parts = (await connection.execute(sa.select(sa.func.count()).select_from(batch_file_parts))).scalar_one()
    assert set(files) == {done.output_file_id, done.error_file_id}  # the second finalize wrote nothing
    output, error = await _chunks(engine, done.output_file_id), await _chunks(engine, done.error_file_id)
    assert len(output) > 3 and all(len(part) < 600 + 400 for part in output)  # parts of about PART_BYTES
    assert parts == len(output) + len(await _chunks(engine, done.error_file_id))
    answered = [orjson.loads(raw) for raw in b"".join(output).splitlines()]
    assert [e["custom_id"] for e in answered] == [f"c{n}" for n in range(1, 21) if n not in REFUSED + FAILED]
    assert answered[0]["response"]["body"]["choices"][0]["message"]["content"].startswith("answer 1 ")
    refused = [orjson.loads(raw) for raw in b"".join(error).splitlines()]
    assert [e["custom_id"] for e in refused] == ["bad2", "c4", "bad5", "c9", "bad11", "c15", "c20"]  # merged
    for file_id, chunks in ((done.output_file_id, output), (done.error_file_id, error)):
        assert files[file_id].bytes == len(b"".join(chunks)) and files[file_id].content == b""
        assert files[file_id].lines == b"".join(chunks).count(b"\n")
    await store.delete_file(engine, done.output_file_id, store.Owner("k"), NOW)
    assert await _chunks(engine, done.output_file_id) == []
    async with engine.connect() as connection:
        left = (await connection.execute(sa.select(sa.func.count()).select_from(batch_file_parts))).scalar_one()
    assert left == len(error)  # its parts went with it; the error file's stay
    await engine.dispose()


async def test_an_upload_reads_back_as_its_one_blob(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    db.upgrade(url)
    engine = db.make_async_engine(url)
    row = await store.add_file(engine, store.Owner("k"), "in.jsonl", b'{"a":1}\n', 1, 1 << 20, NOW)
    assert await _chunks(engine, row.id) == [b'{"a":1}\n']
    assert await store.input_content(engine, row.id) == b'{"a":1}\n'
    await engine.dispose()


async def test_many_refused_lines_are_rows_and_the_job_lists_the_first_100(db_path: Path) -> None:
    """Every refused line is a row of batch_errors and an entry of the error file (in line order, among the
    lines that failed later); the job object lists only the first SHOWN_ERRORS: 50,000 refusals in one value
    were read whole with every look at the job (300 MB with long custom_ids)."""
    refused = [{**line(f"dup{n % 2}"), "custom_id": "same"} for n in range(250)]  # line 1 is taken, 249 refused
    content = jsonl(*refused, line("ok"))
    async with gateway(batch_settings(db_path)) as gw:
        client = sdk(gw)
        done = await run_job(client, content, "many.jsonl")
        assert done.status == "completed" and done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (251, 2, 249)
        assert (
            done.errors is not None and done.errors.data is not None and len(done.errors.data) == progress.SHOWN_ERRORS
        )
        assert done.errors.data[0].message == "custom_id is already used on line 1"
        assert done.error_file_id is not None and done.output_file_id is not None
        bad = entries((await client.files.content(done.error_file_id)).content)
        assert [e["error"]["line"] for e in bad] == list(range(2, 251))
        good = entries((await client.files.content(done.output_file_id)).content)
        assert [e["custom_id"] for e in good] == ["same", "ok"]


def test_the_migration_moves_a_validated_jobs_errors_into_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    db.upgrade(url, "0011")
    engine = sa.create_engine(url)
    errors = [{"line": n, "custom_id": None, "code": "invalid_json", "message": "no", "param": None} for n in (3, 1)]
    with engine.begin() as connection:
        connection.execute(
            batches.insert().values(
                id="batch_old", input_file_id="f", endpoint="/v1/chat/completions", completion_window="24h",
                status="in_progress", tags={}, errors=errors, created_at=NOW, expires_at=NOW,
            )
        )  # fmt: skip
    engine.dispose()
    db.upgrade(url)
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sa.select(batch_errors).order_by(batch_errors.c.line)).all()
    engine.dispose()
    assert [(r.batch_id, r.line, r.error["code"]) for r in rows] == [
        ("batch_old", 1, "invalid_json"),
        ("batch_old", 3, "invalid_json"),
    ]
