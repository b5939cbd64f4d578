"""What a user of the official `openai` SDK reads back from OpenAI's Files and Batch APIs, over a real socket:
`files.list` filters by `purpose`, orders by `order` and pages up to 10,000 files (OpenAI's default and most);
a batch carries the `usage` of its lines; a job named on a file that is not an upload is a 400 saying why."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import sqlalchemy as sa

from margin.app import build_app
from margin.ledger.models import batches, ledger
from margin.services import Services
from tests.batches.helpers import batch_settings, jsonl, line, run_job
from tests.helpers import live_server


@dataclass
class Served:
    client: openai.AsyncOpenAI
    services: Services


@pytest.fixture
async def served(db_path: Path) -> AsyncIterator[Served]:
    app = build_app(batch_settings(db_path))
    async with live_server(app) as url:
        client = openai.AsyncOpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        yield Served(client, app.state.services)
        await client.close()


async def _files(client: openai.AsyncOpenAI) -> tuple[list[str], str]:
    """Three uploads, then a job's upload and output file: (the three uploads' ids, the output file's id)."""
    uploads = [
        (await client.files.create(file=(f"in{n}.jsonl", jsonl(line(f"r{n}"))), purpose="batch")).id for n in range(3)
    ]
    done = await run_job(client, jsonl(line("a"), line("b")))
    assert done.output_file_id is not None
    return uploads, done.output_file_id


async def test_files_list_filters_by_purpose(served: Served) -> None:
    client = served.client
    _, output = await _files(client)
    batch_only = [f async for f in client.files.list(purpose="batch")]
    assert {f.purpose for f in batch_only} == {"batch"} and len(batch_only) == 4
    assert [f.id async for f in client.files.list(purpose="batch_output")] == [output]
    assert [f.id async for f in client.files.list(purpose="fine-tune")] == []
    page = await client.files.list(limit=2, purpose="batch")
    assert {f.purpose for f in page.data} == {"batch"} and page.has_more


async def test_files_list_orders_oldest_first_when_asked_and_pages_in_that_order(served: Served) -> None:
    client = served.client
    uploads, output = await _files(client)
    newest_first = [f.id async for f in client.files.list()]
    assert len(newest_first) == 5 and newest_first[0] == output
    oldest_first = [f.id async for f in client.files.list(order="asc")]
    assert oldest_first == newest_first[::-1] and oldest_first[:3] == uploads
    paged = [f.id async for f in client.files.list(order="asc", limit=1)]  # the SDK follows `after` page by page
    assert paged == oldest_first
    with pytest.raises(openai.BadRequestError):
        await client.files.list(order="sideways")  # type: ignore[arg-type]


async def test_files_list_takes_openais_limits(served: Served) -> None:
    client = served.client
    await _files(client)
    assert len((await client.files.list(limit=10_000)).data) == 5  # OpenAI's most, and its default
    assert len((await client.files.list()).data) == 5
    with pytest.raises(openai.BadRequestError):
        await client.files.list(limit=10_001)


async def test_a_batch_reports_the_tokens_its_lines_used(served: Served) -> None:
    client = served.client
    upload = await client.files.create(file=("in.jsonl", jsonl(*(line(f"r{n}") for n in range(3)))), purpose="batch")
    created = await client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert created.usage is not None and created.usage.total_tokens == 0
    done = await run_job(client, jsonl(*(line(f"r{n}", f"question number {n}") for n in range(3))))
    async with served.services.engine.connect() as connection:
        sums = (
            await connection.execute(
                sa.select(sa.func.sum(ledger.c.input_tokens), sa.func.sum(ledger.c.output_tokens)).where(
                    ledger.c.batch_id == done.id
                )
            )
        ).one()
    used = done.usage
    assert used is not None
    assert (used.input_tokens, used.output_tokens) == (sums[0], sums[1]) and used.output_tokens == 3 * 5
    assert used.total_tokens == used.input_tokens + used.output_tokens > used.output_tokens
    assert used.input_tokens_details.cached_tokens == 0 and used.output_tokens_details.reasoning_tokens == 0
    listed = {b.id: b.usage async for b in client.batches.list()}
    assert listed[done.id] == used and listed[created.id] is not None
    async with served.services.engine.connect() as connection:  # kept when it ended: not summed on every look
        stored = await connection.scalar(sa.select(batches.c.usage).where(batches.c.id == done.id))
    assert stored == {"input_tokens": used.input_tokens, "cached_tokens": 0, "output_tokens": used.output_tokens}


async def test_a_job_on_a_file_that_is_not_an_upload_is_a_400_naming_its_purpose(served: Served) -> None:
    client = served.client
    done = await run_job(client, jsonl(line("a")))
    assert done.output_file_id is not None
    with pytest.raises(openai.BadRequestError) as refused:
        await client.batches.create(
            input_file_id=done.output_file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    error = refused.value.body
    assert isinstance(error, dict)
    assert (error["param"], error["code"]) == ("input_file_id", "invalid_file_purpose")
    assert "batch_output" in error["message"]


async def test_an_upload_that_is_not_multipart_is_told_to_send_multipart(served: Served) -> None:
    """A form post or a bare body to /v1/files is a 415 that says what an upload needs (it said
    `POST needs Content-Type: application/json`, which /v1/files never takes); other POSTs are unchanged."""
    url = str(served.client.base_url).rstrip("/")
    async with httpx.AsyncClient() as http:
        form = await http.post(f"{url}/files", data={"purpose": "batch"})
        bare = await http.post(f"{url}/files", content=jsonl(line("a")))
        for refused in (form, bare):
            assert refused.status_code == 415, refused.text
            assert "multipart/form-data" in refused.json()["error"]["message"]
        chat = await http.post(f"{url}/chat/completions", content=b"{}", headers={"content-type": "text/plain"})
        assert chat.status_code == 415 and "application/json" in chat.json()["error"]["message"]
