"""What callers and operators see of the ledger outbox: every answer's row is in the outbox before the answer
completes; a row that cannot be written is not acknowledged (503 for JSON, an error event instead of `[DONE]`
for a stream); /healthz shows the outbox depth to an operator."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from margin.governance.store import LocalStore
from tests.helpers import disk_full, fake_settings, gateway

CHAT = "/v1/chat/completions"
BODY = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}


async def test_the_row_is_in_the_outbox_when_the_answer_arrives(db_path: Path) -> None:
    async with gateway(fake_settings(db_path, storage={"flush_interval_ms": 60_000})) as gw:
        outbox = gw.services.outbox
        # a pass first: the minute counts from it (before the first pass, which comes once the ingest process has
        # started, a waiting row is already overdue and the ingester would move it before the checks below)
        await outbox.flush()
        reply = await gw.http.post(CHAT, json=BODY)
        assert reply.status_code == 200 and outbox.depth.rows == 1  # written, not yet ingested
        async with gw.http.stream("POST", CHAT, json={**BODY, "stream": True}) as stream:
            body = b"".join([chunk async for chunk in stream.aiter_bytes()])
        assert body.endswith(b"data: [DONE]\n\n") and outbox.depth.rows == 2
        lines = b"".join((outbox.directory / name).read_bytes() for name in os.listdir(outbox.directory))
        ids = [orjson.loads(line)["request_id"] for line in lines.splitlines() if line]
        assert ids == [reply.headers["x-margin-request-id"], stream.headers["x-margin-request-id"]]
        health = (await gw.http.get("/healthz")).json()  # open mode: the caller is the operator
        assert health["ledger"]["outbox_rows"] == 2 and health["ledger"]["outbox_bytes"] == len(lines)
        assert await outbox.flush() == 2
        assert (await gw.http.get("/healthz")).json()["ledger"]["outbox_rows"] == 0
        assert len(await gw.rows()) == 2


async def test_an_answer_whose_row_cannot_be_written_is_not_acknowledged(db_path: Path) -> None:
    async with gateway(fake_settings(db_path)) as gw:
        writer = gw.services.outbox._writer
        writer.os_write = disk_full
        try:
            reply = await gw.http.post(CHAT, json=BODY)
            assert reply.status_code == 503, reply.text
            assert reply.json()["error"]["code"] == "ledger_unavailable"
            async with gw.http.stream("POST", CHAT, json={**BODY, "stream": True}) as stream:
                assert stream.status_code == 200  # the headers left before the end
                body = b"".join([chunk async for chunk in stream.aiter_bytes()])
            assert b"[DONE]" not in body
            assert body.rstrip().endswith(b'"code":"ledger_unavailable"}}')
        finally:
            writer.os_write = os.write
        assert gw.services.outbox.write_errors == 2
        assert (await gw.http.post(CHAT, json=BODY)).status_code == 200  # the disk is back
        assert [row.status for row in await gw.rows()] == ["ok"]


async def test_a_request_whose_row_cannot_be_written_still_settles_its_reservation(db_path: Path) -> None:
    """The upstream answered (and cost something) but the row could not be written: the client gets 503, and
    the budget's reservation is settled to that cost, not left for the reaper to charge in full."""
    budgets = [{"name": "g", "scope": {"kind": "global"}, "usd": "5", "period": "month"}]
    async with gateway(fake_settings(db_path, budgets=budgets)) as gw:
        store = gw.services.governance.store
        assert isinstance(store, LocalStore)
        writer = gw.services.outbox._writer
        writer.os_write = disk_full
        try:
            reply = await gw.http.post(CHAT, json={**BODY, "model": "priced", "max_tokens": 4})
        finally:
            writer.os_write = os.write
        assert reply.status_code == 503
        assert await store.pending() == 0
        ((spent, reserved),) = (await store.counters(list(store._counters))).values()
        assert reserved == 0 and spent > 0


async def test_a_responses_stream_whose_row_cannot_be_written_says_no_usage_was_billed(db_path: Path) -> None:
    """A `/v1/responses` stream whose row could not be written ends with `response.failed` whose usage is null:
    its usage is the row's, and there is no row (before the fix it carried the request's tokens as billed)."""
    async with gateway(fake_settings(db_path)) as gw:
        writer = gw.services.outbox._writer
        writer.os_write = disk_full
        try:
            body = {"model": "fake-chat", "input": "hi", "stream": True}
            async with gw.http.stream("POST", "/v1/responses", json=body) as stream:
                assert stream.status_code == 200
                text = b"".join([chunk async for chunk in stream.aiter_bytes()])
        finally:
            writer.os_write = os.write
        events = [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith(b"data: ")]
        kinds = [event["type"] for event in events]
        assert "error" in kinds and kinds[-1] == "response.failed", kinds
        assert events[-1]["response"]["usage"] is None
        assert await gw.rows() == []
