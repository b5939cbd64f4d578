"""Per-line outcomes: malformed JSONL (bad JSON, wrong method or url, duplicate custom_id, unknown model,
another model, a stream) gives one error entry per bad line and runs the good ones; no line is lost. Expiry,
retries of gateway faults, and a job whose lines all fail validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from margin.batches import quota, store
from margin.batches.jsonl import validate
from margin.ledger.models import batch_errors, batches
from tests.batches.helpers import batch_settings, entries, jsonl, line, run_job, sdk, wait_final
from tests.helpers import gateway

MALFORMED = jsonl(
    line("ok-1"),
    b'{"custom_id": "broken", "method": "POST", "url": ',  # line 2: bad JSON
    {**line("get"), "method": "GET"},  # 3: wrong method
    {**line("url"), "url": "/v1/embeddings"},  # 4: not the job's endpoint
    line("ok-1", "again"),  # 5: duplicate custom_id
    line("nobody", model="no-such-model"),  # 6: unknown model
    line("other", model="priced"),  # 7: another model than the job's
    line("streamed", stream=True),  # 8: streams do not run in batches
    line("typed", max_tokens="many"),  # 9: a field of the wrong type
    b"   ",  # 10: blank: not a request
    line("nul\x00cut"),  # 11: a control character (PostgreSQL's text would cut it at the NUL)
    line("newline\n"),  # 12: at the end too (Python's `$` would let it through)
    line("ok-2"),  # 13
)


def test_validation_sorts_every_line() -> None:
    lines, errors = validate(MALFORMED, "/v1/chat/completions", lambda m: m if m in {"fake-chat", "priced"} else None)
    assert [(x.line, x.custom_id) for x in lines] == [(1, "ok-1"), (13, "ok-2")]
    assert [(e.line, e.code) for e in errors] == [
        (2, "invalid_json"),
        (3, "invalid_method"),
        (4, "invalid_url"),
        (5, "duplicate_custom_id"),
        (6, "model_not_found"),
        (7, "model_mismatch"),
        (8, "unsupported_parameter"),
        (9, "invalid_request"),
        (11, "invalid_custom_id"),
        (12, "invalid_custom_id"),
    ]
    assert errors[8 - 2].custom_id == "streamed" and errors[0].custom_id is None


async def test_malformed_lines_become_errors_and_good_lines_run(db_path: Path) -> None:
    async with gateway(batch_settings(db_path)) as gw:
        client = sdk(gw)
        done = await run_job(client, MALFORMED, "bad.jsonl")
        assert done.status == "completed" and done.request_counts is not None
        assert done.in_progress_at is not None and done.finalizing_at is not None  # a valid line: it ran
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (12, 2, 10)
        assert done.errors is not None and done.errors.data is not None
        assert sorted(e.line or 0 for e in done.errors.data) == [2, 3, 4, 5, 6, 7, 8, 9, 11, 12]
        assert done.output_file_id and done.error_file_id
        good = entries((await client.files.content(done.output_file_id)).content)
        bad = entries((await client.files.content(done.error_file_id)).content)
        assert [e["custom_id"] for e in good] == ["ok-1", "ok-2"]
        assert [e["error"]["line"] for e in bad] == [2, 3, 4, 5, 6, 7, 8, 9, 11, 12]
        assert all(e["response"] is None for e in bad)
        assert len({e["id"] for e in good + bad}) == 12  # every input line once, none lost
        assert len([r for r in await gw.rows() if r.batch_id == done.id]) == 2  # only valid lines ran


async def test_a_job_with_no_valid_line_fails_with_its_errors(db_path: Path) -> None:
    async with gateway(batch_settings(db_path)) as gw:
        client = sdk(gw)
        upload = await client.files.create(file=("bad.jsonl", jsonl(line("x", model="nope"), b"{")), purpose="batch")
        batch = await client.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="1h",  # type: ignore[arg-type]  # margin takes windows the SDK's types do not
        )
        done = await wait_final(client, batch.id)
        assert done.status == "failed" and done.failed_at is not None and done.output_file_id is None
        # validating → failed, as OpenAI: it never ran (it went through in_progress and finalizing before)
        assert (done.in_progress_at, done.finalizing_at, done.completed_at) == (None, None, None)
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (2, 0, 2)
        assert done.errors is not None and done.errors.data is not None
        assert [(e.line, e.code) for e in done.errors.data] == [(1, "model_not_found"), (2, "invalid_json")]
        assert done.usage is not None and done.usage.total_tokens == 0
        assert done.error_file_id is not None
        bad = entries((await client.files.content(done.error_file_id)).content)
        assert [e["error"]["line"] for e in bad] == [1, 2]
        assert (await client.batches.retrieve(batch.id)).status == "failed"  # and it stays so
        async with gw.services.engine.connect() as connection:
            kept = await connection.scalar(sa.select(batches.c.stored_bytes).where(batches.c.id == batch.id))
            copies = await connection.scalar(
                sa.select(sa.func.count()).select_from(batch_errors).where(batch_errors.c.batch_id == batch.id)
            )
        assert copies == 0 and kept == quota.job_row_bytes(None, {}, [e.model_dump() for e in done.errors.data])


async def test_a_job_whose_input_file_is_deleted_before_validation_fails_saying_so(db_path: Path) -> None:
    """It failed with no error at all (the missing file was read as an empty one; so was any failure to read it,
    a database that was briefly locked included)."""
    async with gateway(batch_settings(db_path)) as gw:
        runner = gw.app.state.batch_runner
        await runner.close(grace_s=0)  # the job stays `validating` until validated below
        client = sdk(gw)
        upload = await client.files.create(file=("in.jsonl", jsonl(line("x"))), purpose="batch")
        batch = await client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert (await client.files.delete(upload.id)).deleted
        await runner._validate(await store.get_batch(gw.services.engine, batch.id, None))
        done = await client.batches.retrieve(batch.id)
    assert done.status == "failed" and done.errors is not None and done.errors.data is not None
    (error,) = done.errors.data
    assert error.code == "input_file_missing" and error.message is not None and "deleted" in error.message


async def test_lines_left_at_the_deadline_expire(db_path: Path) -> None:
    async with gateway(batch_settings(db_path, objective="carbon")) as gw:
        runner = gw.app.state.batch_runner
        runner.clock = lambda: datetime.now(UTC) + timedelta(hours=2)  # past a 1h window: nothing may run
        client = sdk(gw)
        upload = await client.files.create(file=("in.jsonl", jsonl(line("a"), line("b"))), purpose="batch")
        batch = await client.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="1h",  # type: ignore[arg-type]  # margin takes windows the SDK's types do not
        )
        done = await wait_final(client, batch.id)
        assert done.status == "expired" and done.expired_at is not None and done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (0, 2)
        assert done.error_file_id is not None
        bad = entries((await client.files.content(done.error_file_id)).content)
        assert {e["error"]["code"] for e in bad} == {"batch_expired"}
        assert [r for r in await gw.rows() if r.batch_id == batch.id] == []


async def test_gateway_faults_are_retried_then_reported(db_path: Path) -> None:
    settings = batch_settings(db_path, max_attempts=2)
    backends = {**settings.backends, "fake": settings.backends["fake"].model_copy(update={"fail_status": 502})}
    async with gateway(settings.model_copy(update={"backends": backends})) as gw:
        runner = gw.app.state.batch_runner
        shift = timedelta(0)

        def clock() -> datetime:
            return datetime.now(UTC) + shift

        runner.clock = clock
        client = sdk(gw)
        upload = await client.files.create(file=("in.jsonl", jsonl(line("a"))), purpose="batch")
        batch = await client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        shift = timedelta(seconds=10)  # past the retry's back-off without waiting for it
        done = await wait_final(client, batch.id)
        assert done.status == "completed" and done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (0, 1)
        assert done.error_file_id is not None
        (bad,) = entries((await client.files.content(done.error_file_id)).content)
        assert bad["response"]["status_code"] == 502 and bad["response"]["body"]["error"]["code"]
        rows = [r for r in await gw.rows() if r.batch_id == batch.id]
        assert len(rows) == 2 and len({r.request_id for r in rows}) == 2  # two attempts, two real rows
        assert bad["response"]["request_id"] in {r.request_id for r in rows}


DEEP = (
    b'{"custom_id":"deep","method":"POST","url":"/v1/chat/completions","body":{"model":"fake-chat",'
    b'"messages":[{"role":"user","content":"hi"}],"x":' + b"[" * 300 + b"]" * 300 + b"}}"
)


def test_a_body_nested_past_what_can_be_stored_is_a_line_error() -> None:
    """300 levels parse (orjson's limit is 1,024) but orjson writes at most 254: the line used to raise out of
    the validation, which then started over every poll, forever, and the job never left `validating`. Now it
    is refused past 128 levels, as the API's edge refuses such a body."""
    lines, errors = validate(jsonl(line("ok"), DEEP), "/v1/chat/completions", lambda m: m)
    assert [x.custom_id for x in lines] == ["ok"]
    assert [(e.line, e.custom_id, e.code) for e in errors] == [(2, "deep", "invalid_body")]


async def test_a_job_with_a_deep_line_runs_its_other_lines_and_an_odd_filename_is_stored_printable(
    db_path: Path,
) -> None:
    async with gateway(batch_settings(db_path)) as gw:
        client = sdk(gw)
        done = await run_job(client, jsonl(line("ok"), DEEP), "deep.jsonl")
        assert done.status == "completed" and done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
        form = (  # by hand: the SDK percent-encodes a filename's control characters, a hostile client need not
            b'--X\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--X\r\n'
            b'content-disposition: form-data; name="file"; filename="a\x00b\x1f.jsonl"\r\n\r\n'
            + jsonl(line("x"))
            + b"\r\n--X--\r\n"
        )
        upload = await gw.http.post(
            "/v1/files", content=form, headers={"content-type": "multipart/form-data; boundary=X"}
        )
        assert upload.status_code == 200 and upload.json()["filename"] == "a_b_.jsonl"  # NUL: a 500 on PostgreSQL


async def test_an_upload_is_sent_back_whole_in_parts(db_path: Path) -> None:
    content = jsonl(*(line(f"k{i}", content="x" * 1000) for i in range(2500)))  # ~2.6 MB: three 1 MB parts
    async with gateway(batch_settings(db_path)) as gw:
        client = sdk(gw)
        upload = await client.files.create(file=("big.jsonl", content), purpose="batch")
        async with gw.http.stream("GET", f"/v1/files/{upload.id}/content") as reply:
            parts = [part async for part in reply.aiter_raw()]
        assert b"".join(parts) == content and reply.headers["content-length"] == str(len(content))


async def test_a_file_saved_with_a_byte_order_mark_runs_its_first_line(db_path: Path) -> None:
    """Windows editors (Notepad, PowerShell's `Out-File -Encoding utf8`) write a UTF-8 byte-order mark first
    and end lines with CRLF, and `cat` of two such files puts a mark inside: each such line was an
    `invalid_json` error entry ("BOM is not supported") and never ran. The upload is kept and sent back as
    sent, marks included; a file of the mark alone is empty."""
    one = b"\xef\xbb\xbf" + jsonl(line("first")).replace(b"\n", b"\r\n")
    content = one + b"\xef\xbb\xbf" + jsonl(line("second")).replace(b"\n", b"\r\n")
    async with gateway(batch_settings(db_path)) as gw:
        client = sdk(gw)
        upload = await client.files.create(file=("windows.jsonl", content), purpose="batch")
        assert (await client.files.content(upload.id)).content == content
        batch = await client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = await wait_final(client, batch.id)
        assert done.status == "completed" and done.errors is None and done.error_file_id is None
        assert done.request_counts is not None and (done.request_counts.total, done.request_counts.completed) == (2, 2)
        assert done.output_file_id is not None
        output = entries((await client.files.content(done.output_file_id)).content)
        assert [(e["custom_id"], e["response"]["status_code"]) for e in output] == [("first", 200), ("second", 200)]
        rows = [r for r in await gw.rows() if r.batch_id == batch.id]
        assert sorted(r.request_id for r in rows) == sorted(e["response"]["request_id"] for e in output)
        for marks in (b"\xef\xbb\xbf\r\n", b"\xef\xbb\xbf\r\n\xef\xbb\xbf\r\n"):  # one empty file, two `cat` together
            empty = await gw.http.post("/v1/files", files={"file": ("bom.jsonl", marks)}, data={"purpose": "batch"})
            assert empty.status_code == 400 and empty.json()["error"]["code"] == "empty_file"


async def test_lines_naming_one_model_by_its_aliases_are_one_model(db_path: Path) -> None:
    """`fc` is an alias of `fake-chat` (one model, one deployment): a job whose lines use both names ran only
    the first name's lines, the others were `model_mismatch` errors. A name of another model still is."""
    content = jsonl(line("alias", model="fc"), line("name", model="fake-chat"), line("other", model="priced"))
    async with gateway(batch_settings(db_path)) as gw:
        client = sdk(gw)
        done = await run_job(client, content)
        assert done.status == "completed" and done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
        assert done.output_file_id is not None and done.error_file_id is not None
        output = entries((await client.files.content(done.output_file_id)).content)
        assert [(e["custom_id"], e["response"]["status_code"]) for e in output] == [("alias", 200), ("name", 200)]
        (refused,) = entries((await client.files.content(done.error_file_id)).content)
        assert (refused["custom_id"], refused["error"]["code"]) == ("other", "model_mismatch")
        rows = [r for r in await gw.rows() if r.batch_id == done.id]
        assert sorted(r.model for r in rows) == ["fake-chat", "fake-chat"]
