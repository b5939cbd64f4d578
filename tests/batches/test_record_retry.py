"""A line whose answer landed while the ledger database was locked (or unreachable) is recorded once the
database is back, not run again: recording its outcome failed, the job's run ended, and the next run put the
line, still `running`, back to pending as a cut-off one. It ran, and was paid for, twice."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import openai
import yaml

from tests.batches.helpers import FINAL, attempt_of, entries, jsonl, line, read_db
from tests.helpers import margin_serve
from tests.security.conftest import FAKE_CONFIG
from tests.security.waiting import wait_for


def _config(tmp_path: Path) -> Path:
    fake = {**FAKE_CONFIG["backends"]["fake"], "ttft_ms": 1500}
    config: dict[str, Any] = {
        **FAKE_CONFIG,
        "backends": {**FAKE_CONFIG["backends"], "fake": fake},
        "batches": {"objective": "asap", "concurrency": 1, "poll_s": 0.05},
    }
    path = tmp_path / "margin.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_line_that_landed_while_the_database_was_locked_runs_once(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with margin_serve(db, tmp_path / "serve.log", config=_config(tmp_path), ready_s=60) as (url, _):
        client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        upload = client.files.create(file=("in.jsonl", jsonl(line("only"))), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        running = "SELECT count(*) FROM batch_lines WHERE batch_id = ? AND status = 'running'"
        wait_for(lambda: read_db(db, running, batch.id) == [(1,)], "the line in flight", 30)
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # the answer lands (1.5 s) and its recording fails (5 s busy timeout)
        time.sleep(20)
        lock.execute("COMMIT")
        lock.close()
        deadline = time.monotonic() + 30
        while (current := client.batches.retrieve(batch.id)).status not in FINAL:
            assert time.monotonic() < deadline, current.status
            time.sleep(0.05)
        assert current.status == "completed" and current.output_file_id is not None
        (entry,) = entries(client.files.content(current.output_file_id).content)
    rows = read_db(db, "SELECT request_id, status FROM ledger WHERE batch_id = ?", batch.id)
    assert rows == [(entry["response"]["request_id"], "ok")]  # one call, one row: not run (and paid) twice
    assert attempt_of(batch.id, 1, entry["response"]["request_id"]) == 1
