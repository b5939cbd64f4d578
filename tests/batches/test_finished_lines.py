"""A finished job's line rows stop filling its key's `batches.max_stored_bytes_per_key`, against a real
`margin serve`: when a job ends its `batch_lines` rows are deleted and its row keeps their counts by status
(what retrieve and list report), so deleting its files frees its key's space. Before, each line row counted
~128 bytes and its custom_id for ever (five 1,000-line jobs kept 667 KB of a 1 MB quota after every file was
deleted, and every new job then failed `storage_quota_exceeded`). A gateway started again deletes the line
rows of jobs that ended without that (a crash, or a replica on an older release), keeping or counting theirs."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import openai
import yaml

from margin.batches import quota
from tests.batches.helpers import jsonl, line, read_db
from tests.helpers import margin_serve
from tests.security.conftest import FAKE_CONFIG
from tests.security.waiting import wait_for

LINES = 200
LIMIT = 120_000  # an upload (~50 KB) and a job's copy of it; not also what 200 line rows kept (~46 KB) before
JOBS = 5


def _config(tmp_path: Path, **batches: Any) -> Path:
    config = {
        **FAKE_CONFIG,
        "batches": {"objective": "asap", "concurrency": 16, "poll_s": 0.05, "lease_s": 1.0, **batches},
    }
    path = tmp_path / "margin.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _finished(client: openai.OpenAI, batch_id: str, seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while (current := client.batches.retrieve(batch_id)).status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, current.status
        time.sleep(0.05)
    return current


def _run(client: openai.OpenAI, content: bytes) -> Any:
    upload = client.files.create(file=("in.jsonl", content), purpose="batch")  # 413 from the second job, before
    job = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    return _finished(client, job.id)


def _lines_of(batch: Any) -> Any:
    return (batch.model_extra or {}).get("margin", {}).get("lines")


def _stored(db: Path) -> dict[str, tuple[int, int]]:
    """Each job's (stored_bytes, what its row alone counts)."""
    found = {}
    for batch_id, stored, *values in read_db(db, "SELECT id, stored_bytes, meta, tags, errors, plan FROM batches"):
        found[batch_id] = (stored, quota.job_row_bytes(*(None if v is None else json.loads(v) for v in values)))
    return found


def test_deleting_finished_jobs_files_frees_the_keys_space(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    content = jsonl(*(line(f"{n:03d}-" + "c" * 96) for n in range(LINES)))
    assert 45_000 < len(content) < 55_000
    finished = []
    with margin_serve(db, tmp_path / "serve.log", config=_config(tmp_path, max_stored_bytes_per_key=LIMIT)) as (url, _):
        client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        for _ in range(JOBS):
            done = _run(client, content)
            assert done.status == "completed" and done.request_counts is not None
            assert (done.request_counts.completed, done.request_counts.failed) == (LINES, 0)
            assert done.output_file_id is not None and done.error_file_id is None
            for file_id in (done.input_file_id, done.output_file_id):
                client.files.delete(file_id)
            finished.append(done.id)
        listed = {b.id: b for b in client.batches.list(limit=JOBS).data}
        for batch_id in finished:
            kept = client.batches.retrieve(batch_id)
            assert kept.request_counts is not None and listed[batch_id].request_counts == kept.request_counts
            assert (kept.request_counts.total, kept.request_counts.completed) == (LINES, LINES)
            assert _lines_of(kept) == {"done": LINES}  # kept on its row: its line rows are gone
        assert read_db(db, "SELECT count(*) FROM batch_lines") == [(0,)]
        assert read_db(db, "SELECT count(*) FROM batch_files") == [(0,)]
    stored = _stored(db)
    assert len(stored) == JOBS and all(kept == row < 2 * quota.ROW_BYTES for kept, row in stored.values())


def _keep_lines(db: Path, kept: bool) -> None:
    """A crash between a job's end and the deletion of its line rows (were they two steps), as SQLite can make
    it: a trigger that skips every deletion of a line row, so the job ends with its line rows still there."""
    connection = sqlite3.connect(db)
    try:
        if kept:
            connection.execute("CREATE TRIGGER keep_lines BEFORE DELETE ON batch_lines BEGIN SELECT RAISE(IGNORE); END")
        else:
            connection.execute("DROP TRIGGER keep_lines")
        connection.commit()
    finally:
        connection.close()


def test_a_restart_deletes_the_line_rows_an_ended_job_left(tmp_path: Path) -> None:
    """Job `old` ended as an older release ends a job (line rows kept, no counts on its row, its lines counted):
    the gateway started again deletes its line rows, and it gets its counts from them. Job `cut` ended with its
    counts on its row but its line rows left, a state only the test's trigger makes (its counts are written in
    the transaction that deletes its lines): the settle no longer looks for it (it reads only the ended jobs
    without counts, through an index), so its rows stay, unread. Both report the same counts before and after,
    and store their row alone."""
    db, config = tmp_path / "ledger.db", _config(tmp_path)
    content = jsonl(line("a"), line("b"), b"{", line("d"))  # line 3 refused at validation
    with margin_serve(db, tmp_path / "first.log", config=config, ready_s=60) as (url, process):
        client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        _keep_lines(db, True)
        jobs = {name: _run(client, content) for name in ("cut", "old")}
        for job in jobs.values():
            assert job.status == "completed" and job.request_counts is not None
            assert (job.request_counts.total, job.request_counts.completed, job.request_counts.failed) == (4, 3, 1)
            assert _lines_of(job) == {"done": 3}
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    _keep_lines(db, False)
    cut, old = jobs["cut"].id, jobs["old"].id
    connection = sqlite3.connect(db)
    try:
        connection.execute(
            "UPDATE batches SET line_counts = NULL, stored_bytes = stored_bytes + 999 WHERE id = ?", (old,)
        )
        connection.commit()
    finally:
        connection.close()
    assert read_db(db, "SELECT batch_id, count(*) FROM batch_lines GROUP BY batch_id ORDER BY batch_id") == sorted(
        [(cut, 3), (old, 3)]
    )
    with margin_serve(db, tmp_path / "second.log", config=config, ready_s=60) as (url, _):
        client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        left = "SELECT count(*) FROM batch_lines WHERE batch_id = ?"
        wait_for(lambda: read_db(db, left, old) == [(0,)], "the old job's line rows deleted", 30)
        assert read_db(db, left, cut) == [(3,)]
        for batch_id in (cut, old):
            again = client.batches.retrieve(batch_id)
            assert again.request_counts == jobs["cut"].request_counts and _lines_of(again) == {"done": 3}
    counts = dict(read_db(db, "SELECT id, line_counts FROM batches"))
    assert json.loads(counts[cut]) == json.loads(counts[old]) == {"done": 3}
    assert all(kept == row for kept, row in _stored(db).values())
