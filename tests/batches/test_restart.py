"""A job survives its gateway being killed mid-run (SIGKILL, no shutdown): started again, the gateway
resumes it without redoing finished lines or writing any line (or ledger row) twice. A line caught in flight
runs again as its next attempt; the attempt cut off keeps its row if it had one (see test_cut_lines.py)."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import openai
import yaml

from margin.batches.store import line_request_id
from tests.batches.helpers import attempt_of, entries, jsonl, line
from tests.helpers import margin_serve
from tests.security.conftest import FAKE_CONFIG
from tests.security.waiting import wait_for

LINES = 30


def _config(tmp_path: Path) -> Path:
    config: dict[str, Any] = {
        **FAKE_CONFIG,
        "storage": {"flush_interval_ms": 10},
        "backends": {**FAKE_CONFIG["backends"], "fake": {**FAKE_CONFIG["backends"]["fake"], "ttft_ms": 60}},
        "batches": {"objective": "asap", "concurrency": 2, "poll_s": 0.05, "lease_s": 1.0},
    }
    path = tmp_path / "margin.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_kill_mid_job_then_restart_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    config, db = _config(tmp_path), tmp_path / "ledger.db"
    with margin_serve(db, tmp_path / "first.log", config=config, ready_s=60) as (url, process):
        client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        upload = client.files.create(file=("in.jsonl", jsonl(*(line(f"k{i}") for i in range(LINES)))), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")

        def some_done() -> bool:
            counts = client.batches.retrieve(batch.id).request_counts
            return counts is not None and counts.completed >= 6

        wait_for(some_done, "six lines done", 30)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    # what the kill left, read before the restart: the restarted gateway's worker resumes the job during its start,
    # and may finish it (~1 s) before a first request could ask how far it was
    left = sqlite3.connect(db)
    try:
        status, completed = left.execute("SELECT status, completed FROM batches WHERE id = ?", (batch.id,)).fetchone()
    finally:
        left.close()
    assert status == "in_progress" and 6 <= completed < LINES  # killed mid-job
    client_counts = None
    with margin_serve(db, tmp_path / "second.log", config=config, ready_s=60) as (url, _):
        client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        deadline = time.monotonic() + 60
        while (current := client.batches.retrieve(batch.id)).status != "completed":
            assert time.monotonic() < deadline, current.status
            time.sleep(0.05)
        client_counts = current.request_counts
        assert current.output_file_id is not None and current.error_file_id is None
        output = entries(client.files.content(current.output_file_id).content)
    assert client_counts is not None and (client_counts.completed, client_counts.failed) == (LINES, 0)
    assert sorted(e["custom_id"] for e in output) == sorted(f"k{i}" for i in range(LINES))  # each exactly once
    import sqlalchemy as sa

    from margin.ledger import db as ledger_db

    engine = ledger_db.make_sync_engine(f"sqlite:///{db}")
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT request_id FROM ledger WHERE batch_id = :b"), {"b": batch.id}).all()
    engine.dispose()
    last = {int(e["custom_id"][1:]) + 1: e["response"]["request_id"] for e in output}  # line k<i> is line i + 1
    attempts = {n: attempt_of(batch.id, n, request_id) for n, request_id in last.items()}
    ids = [row[0] for row in rows]
    answered = {e["response"]["request_id"] for e in output}
    assert len(ids) == len(set(ids))  # no row twice
    assert len(answered) == LINES and answered <= set(ids)  # every line's answer has its row
    # the rest: attempts the kill cut off after their row was written (paid for, so recorded), each an earlier
    # attempt of a line that ran again; at most the lines in flight (concurrency 2)
    earlier = {line_request_id(batch.id, n, a) for n, last in attempts.items() for a in range(1, last)}
    assert set(ids) - answered <= earlier and len(set(ids) - answered) <= 2
