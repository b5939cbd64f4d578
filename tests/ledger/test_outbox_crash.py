"""Acknowledged means recorded (issue 14 §2): `kill -9` of a running `margin serve` under 400 requests/s (offered,
Poisson) of mixed JSON and streamed requests, then a restart on the same ledger. Every request the client saw completed
(JSON: a 200 with its whole body; stream: `[DONE]`) has its row, and no row is there twice.

The ingester runs every second here, so at the kill many acknowledged rows are only in the outbox file (the
test checks that some were): the restart finds the dead process's file, ingests it from its committed offset
and deletes it."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from tests.helpers import child_pids, margin_serve, wait_gone

RATE = 400  # offered requests/s (Poisson), half of them streamed
KILL_AFTER = 400  # acknowledged requests before the kill
CONFIG = {
    "storage": {"flush_interval_ms": 1000},
    "backends": {"fake": {"kind": "fake", "output_tokens": 16, "ttft_ms": 5, "tokens_per_s": 800}},
    "models": {"fake-chat": {"backend": "fake"}},
}


@dataclass
class Load:
    acknowledged: list[str] = field(default_factory=list)
    cut: int = 0  # requests the kill interrupted (or refused)
    other: list[int] = field(default_factory=list)  # statuses other than 200 (none expected)


async def one(http: aiohttp.ClientSession, url: str, n: int, load: Load) -> None:
    stream = n % 2 == 1
    body = {"model": "fake-chat", "messages": [{"role": "user", "content": f"request {n}"}], "stream": stream}
    try:
        async with http.post(f"{url}/v1/chat/completions", json=body) as response:
            data = await response.read()
            if response.status != 200:
                load.other.append(response.status)
                return
            complete = data.endswith(b"data: [DONE]\n\n") if stream else data.startswith(b'{"id"')
            if complete:  # what a client counts as answered
                load.acknowledged.append(response.headers["x-margin-request-id"])
            else:
                load.cut += 1
    except (TimeoutError, aiohttp.ClientError):
        load.cut += 1


async def drive(url: str, pid: int) -> tuple[Load, float, float]:
    """Poisson arrivals at RATE until KILL_AFTER requests were acknowledged, then `kill -9` (arrivals go on
    until then, so requests are in flight); returns once every request has ended, with the rates offered and
    answered (req/s)."""
    load, rng = Load(), random.Random(14)
    tasks: list[asyncio.Task[None]] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
        started = due = time.monotonic()
        while len(load.acknowledged) < KILL_AFTER and len(tasks) < 20 * KILL_AFTER:
            due += rng.expovariate(RATE)
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(one(http, url, len(tasks), load)))
        os.kill(pid, signal.SIGKILL)
        elapsed = time.monotonic() - started
        offered, answered = len(tasks) / elapsed, len(load.acknowledged) / elapsed
        await asyncio.gather(*tasks)
    return load, offered, answered


def ledger_ids(db: Path) -> list[str]:
    with sqlite3.connect(db) as connection:
        return [r[0] for r in connection.execute("SELECT request_id FROM ledger WHERE kind = 'request'")]


def test_kill_9_under_load_loses_no_acknowledged_row(tmp_path: Path) -> None:
    db, config = tmp_path / "ledger.db", tmp_path / "margin.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    with margin_serve(db, tmp_path / "serve.log", config=config, ready_s=60) as (url, process):
        children = child_pids(process.pid, at_least=1)  # its ledger-ingest process (storage.ingest_in: process)
        load, offered, answered = asyncio.run(drive(url, process.pid))
        process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL
    assert len(children) == 1 and wait_gone(children) == [], "the ingest process outlived its gateway"
    assert load.other == [], load.other
    assert len(load.acknowledged) >= KILL_AFTER
    assert load.cut > 0  # the kill landed while requests were in flight
    outbox = Path(f"{db}.outbox")
    assert any(name.endswith(".jsonl") for name in os.listdir(outbox))  # the dead process's file
    before = set(ledger_ids(db))
    assert set(load.acknowledged) - before, "every row was already ingested: the test proved nothing"

    with margin_serve(db, tmp_path / "restart.log", config=config, ready_s=60) as (_, restarted):
        children = child_pids(restarted.pid, at_least=1)  # starting ingests the dead process's file; stopping (SIGTERM)
    assert wait_gone(children) == []  # drains this one's, and its ingest process ends with it
    ids = ledger_ids(db)
    missing = set(load.acknowledged) - set(ids)
    assert not missing, f"{len(missing)} acknowledged requests have no row"
    assert len(ids) == len(set(ids))  # no row twice
    assert os.listdir(outbox) == []  # every file ingested and deleted, no lock left
    print(
        f"offered {offered:.0f} req/s, answered {answered:.0f} req/s, {len(load.acknowledged)} acknowledged, "
        f"{load.cut} cut by the kill, "
        f"{len(set(load.acknowledged) - before)} acknowledged rows were only in the outbox at the kill"
    )
