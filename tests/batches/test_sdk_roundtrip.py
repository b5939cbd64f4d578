"""The official openai SDK's Batch API calls against the gateway with the fake backend: files.create,
batches.create, retrieve, list, cancel, files.content; each line goes through the normal request path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from margin.economics.money import from_nanousd
from tests.batches.helpers import batch_settings, entries, jsonl, line, sdk, wait_final
from tests.helpers import Gateway, gateway


@pytest.fixture
async def bgw(db_path: Path) -> AsyncIterator[Gateway]:
    async with gateway(batch_settings(db_path)) as g:
        yield g


async def test_round_trip_runs_every_line_through_the_gateway_at_a_discount(bgw: Gateway) -> None:
    client = sdk(bgw)
    upload = await client.files.create(
        file=("in.jsonl", jsonl(*(line(f"r{i}", f"question {i}") for i in range(5)))), purpose="batch"
    )
    assert (upload.purpose, upload.filename, upload.status) == ("batch", "in.jsonl", "processed")
    created = await client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "t"}
    )
    assert created.status == "validating" and created.metadata == {"job": "t"}
    done = await wait_final(client, created.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (5, 5, 0)
    assert done.error_file_id is None and done.output_file_id is not None
    output = entries((await client.files.content(done.output_file_id)).content)
    assert sorted(e["custom_id"] for e in output) == [f"r{i}" for i in range(5)]
    assert all(e["response"]["status_code"] == 200 and e["error"] is None for e in output)
    assert output[0]["response"]["body"]["choices"][0]["message"]["content"] == "tok " * 5

    rows = [r for r in await bgw.rows() if r.batch_id == created.id]
    assert len(rows) == 5 and {r.request_id for r in rows} == {e["response"]["request_id"] for e in output}
    for row in rows:
        assert row.tags["batch_id"] == created.id and row.status == "ok"
        # the discount (50 % by default) is taken off the metered cost and recorded
        assert row.discount_nanousd is not None and abs(row.discount_nanousd - row.cost_nanousd) <= 1

    listed = [b.id async for b in client.batches.list(limit=10)]
    assert listed == [created.id]
    file_ids = [f.id async for f in client.files.list()]
    assert set(file_ids) == {upload.id, done.output_file_id}


async def test_live_traffic_rows_have_no_batch_id_and_full_price(bgw: Gateway) -> None:
    client = sdk(bgw)
    raw = await client.chat.completions.with_raw_response.create(
        model="fake-chat", messages=[{"role": "user", "content": "question 1"}]
    )
    (row,) = await bgw.rows()
    assert row.batch_id is None and row.discount_nanousd is None and "batch_id" not in row.tags
    assert from_nanousd(row.cost_nanousd) == Decimal(raw.headers["x-margin-cost-usd"])


async def test_cancel_stops_dispatching_and_keeps_every_line(db_path: Path) -> None:
    settings = batch_settings(db_path, concurrency=1)
    settings = settings.model_copy(
        update={"backends": {**settings.backends, "fake": settings.backends["fake"].model_copy(update={"ttft_ms": 50})}}
    )
    async with gateway(settings) as g:
        client = sdk(g)
        upload = await client.files.create(
            file=("in.jsonl", jsonl(*(line(f"c{i}") for i in range(40)))), purpose="batch"
        )
        batch = await client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        for _ in range(500):
            current = await client.batches.retrieve(batch.id)
            if current.request_counts and current.request_counts.completed >= 2:
                break
            await __import__("asyncio").sleep(0.01)
        cancelled = await client.batches.cancel(batch.id)
        assert cancelled.status in ("cancelling", "cancelled")
        final = await wait_final(client, batch.id)
        assert final.status == "cancelled" and final.request_counts is not None
        counts = final.request_counts
        assert counts.completed + counts.failed == counts.total == 40
        assert counts.completed < 40  # stopped well before the end
        done = entries((await client.files.content(final.output_file_id)).content) if final.output_file_id else []
        rest = entries((await client.files.content(final.error_file_id)).content)
        assert len(done) == counts.completed and len(rest) == counts.failed
        assert {e["error"]["code"] for e in rest} == {"batch_cancelled"}
        assert sorted(e["custom_id"] for e in done + rest) == sorted(f"c{i}" for i in range(40))
        rows = [r for r in await g.rows() if r.batch_id == batch.id]
        assert len(rows) == counts.completed  # nothing ran after the cancellation landed


async def test_live_callers_cannot_claim_a_batch_discount(bgw: Gateway) -> None:
    """Only the worker's in-process call carries a batch line: a header naming batch_id is refused, and no
    HTTP request can put the private scope key in its scope."""
    spoofed = await bgw.http.post(
        "/v1/chat/completions",
        json={"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-margin-tags": "batch_id=batch_x", "margin.inprocess": "1"},
    )
    assert spoofed.status_code == 400 and spoofed.json()["error"]["param"] == "x-margin-tags"
    plain = await bgw.http.post(
        "/v1/chat/completions",
        json={"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]},
        headers={"margin.inprocess": "1"},
    )
    assert plain.status_code == 200
    rows = await bgw.rows()
    assert [(r.batch_id, r.discount_nanousd) for r in rows] == [(None, None), (None, None)]


async def test_a_batch_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    from margin.ledger import db as ledger_db

    ledger_db.downgrade(postgres_url, "base")
    settings = batch_settings(tmp_path / "unused.db")
    settings = settings.model_copy(update={"storage": settings.storage.model_copy(update={"ledger": postgres_url})})
    async with gateway(settings) as g:
        client = sdk(g)
        upload = await client.files.create(file=("in.jsonl", jsonl(line("p1"), line("p2"), b"{")), purpose="batch")
        batch = await client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = await wait_final(client, batch.id)
        assert done.status == "completed" and done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
        assert done.output_file_id is not None
        output = entries((await client.files.content(done.output_file_id)).content)
        assert sorted(e["custom_id"] for e in output) == ["p1", "p2"]
        assert len([r for r in await g.rows() if r.batch_id == batch.id]) == 2
