"""A line cut off in flight (the gateway stopped past its grace period, or killed) may already have reached
the upstream and been paid for. Run again after a restart, it is a new attempt under a new request id: it is
admitted against the budgets as any call, and both calls have their ledger rows. Under the old id, the second
call's row was dropped as a duplicate of the first and the line's answer pointed at the cut call's row."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa

from margin.batches.store import line_request_id
from margin.ledger import db as ledger_db
from tests.batches.helpers import batch_settings, entries, jsonl, line, sdk, wait_final
from tests.helpers import fake_settings, gateway, polls

SLOW = {"fake": {"kind": "fake", "output_tokens": 5, "region": "eu", "ttft_ms": 30_000}}
BATCHES = {"poll_s": 0.02, "objective": "asap", "concurrency": 1}


def _ledger(db: Path, batch_id: str) -> dict[str, tuple[str, int | None]]:
    engine = ledger_db.make_sync_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as connection:
            query = sa.text("SELECT request_id, status, http_status FROM ledger WHERE batch_id = :b")
            rows = connection.execute(query, {"b": batch_id}).all()
    finally:
        engine.dispose()
    assert len(rows) == len({row[0] for row in rows})  # no request id twice
    return {row[0]: (row[1], row[2]) for row in rows}


async def test_a_line_cut_off_runs_again_as_a_new_attempt_with_a_row_of_its_own(db_path: Path) -> None:
    async with gateway(fake_settings(db_path, batches=BATCHES, backends=SLOW)) as gw:
        client = sdk(gw)
        upload = await client.files.create(file=("in.jsonl", jsonl(line("only"))), purpose="batch")
        batch = await client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        backend = gw.services.backends["fake"]
        for _ in polls(10):
            if backend.health()["calls"]:
                break
            await asyncio.sleep(0.02)
        assert backend.health()["calls"] == 1  # the line's call is in flight, for 30 s
        await gw.app.state.batch_runner.close(grace_s=0)  # stopped: the call is cut off
    first = line_request_id(batch.id, 1, 1)
    assert _ledger(db_path, batch.id) == {first: ("cancelled", 499)}
    async with gateway(batch_settings(db_path, concurrency=1)) as gw:
        client = sdk(gw)
        done = await wait_final(client, batch.id)
        assert done.status == "completed" and done.output_file_id is not None
        (entry,) = entries((await client.files.content(done.output_file_id)).content)
    answered = entry["response"]["request_id"]
    assert answered == line_request_id(batch.id, 1, 2) != first  # the next attempt, under its own id
    rows = _ledger(db_path, batch.id)
    assert rows == {first: ("cancelled", 499), answered: ("ok", 200)}  # both calls recorded


async def _cut_in_flight(db_path: Path, batch_id: str | None) -> str:
    """Start a gateway whose backend takes 30 s, (create the job and) wait for its line's call, and stop the
    gateway past its grace period: the line is left running, its call cut off."""
    settings = fake_settings(db_path, batches={**BATCHES, "max_attempts": 2}, backends=SLOW)
    async with gateway(settings) as gw:
        client = sdk(gw)
        if batch_id is None:
            upload = await client.files.create(file=("in.jsonl", jsonl(line("only"))), purpose="batch")
            made = await client.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            batch_id = made.id
        backend = gw.services.backends["fake"]
        for _ in polls(10):
            if backend.health()["calls"]:
                break
            await asyncio.sleep(0.02)
        assert backend.health()["calls"] == 1
        await gw.app.state.batch_runner.close(grace_s=0)
    return batch_id


async def test_a_line_cut_off_on_its_last_attempt_fails_instead_of_running_on_every_restart(db_path: Path) -> None:
    """A line that stops the gateway each time it runs was run again, and paid for, after every restart: the
    restart put it back to pending whatever its attempts. Now a line cut off on its `max_attempts`-th attempt
    fails (`attempts_exhausted`) and its job ends."""
    batch_id = await _cut_in_flight(db_path, None)
    await _cut_in_flight(db_path, batch_id)  # its second attempt, cut off too
    async with gateway(batch_settings(db_path, concurrency=1, max_attempts=2)) as gw:
        client = sdk(gw)
        done = await wait_final(client, batch_id)
        calls = gw.services.backends["fake"].health()["calls"]
        assert done.status == "completed" and done.error_file_id is not None and done.output_file_id is None
        (entry,) = entries((await client.files.content(done.error_file_id)).content)
        assert done.request_counts is not None and done.request_counts.failed == 1
    assert calls == 0  # not run a third time
    assert entry["custom_id"] == "only" and entry["error"]["code"] == "attempts_exhausted"
    cut = {line_request_id(batch_id, 1, n): ("cancelled", 499) for n in (1, 2)}
    assert _ledger(db_path, batch_id) == cut  # the two paid calls, each with its row, and no third
