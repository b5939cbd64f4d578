"""A job cancelled while a line is in flight, then its gateway killed (SIGKILL) before the line lands: started
again, the job ends `cancelled`, the cut line among its failed lines (`batch_cancelled`). The restart put lines
left running back to pending only for jobs `in_progress`, so a `cancelling` job's running line stayed running for
ever: the job never ended, and counted against `batches.max_active_jobs_per_key` for ever."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import openai
import yaml

from tests.batches.helpers import entries, jsonl, line
from tests.helpers import margin_serve
from tests.security.conftest import FAKE_CONFIG
from tests.security.waiting import wait_for


def _config(tmp_path: Path, ttft_ms: int) -> Path:
    fake = {**FAKE_CONFIG["backends"]["fake"], "ttft_ms": ttft_ms}
    config: dict[str, Any] = {
        **FAKE_CONFIG,
        "backends": {**FAKE_CONFIG["backends"], "fake": fake},
        "batches": {"objective": "asap", "concurrency": 1, "poll_s": 0.05, "lease_s": 1.0},
    }
    path = tmp_path / f"margin-{ttft_ms}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _running(db: Path, batch_id: str) -> int:
    connection = sqlite3.connect(db)
    try:
        query = "SELECT count(*) FROM batch_lines WHERE batch_id = ? AND status = 'running'"
        return int(connection.execute(query, (batch_id,)).fetchone()[0])
    finally:
        connection.close()


def test_a_job_killed_while_cancelling_ends_cancelled_after_restart(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with margin_serve(db, tmp_path / "first.log", config=_config(tmp_path, 30_000), ready_s=60) as (url, process):
        client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        upload = client.files.create(file=("in.jsonl", jsonl(*(line(f"k{i}") for i in range(3)))), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        wait_for(lambda: _running(db, batch.id) == 1, "a line in flight", 30)
        assert client.batches.cancel(batch.id).status == "cancelling"
        process.send_signal(signal.SIGKILL)  # the line in flight (30 s) never lands
        process.wait(timeout=10)
    assert _running(db, batch.id) == 1
    with margin_serve(db, tmp_path / "second.log", config=_config(tmp_path, 0), ready_s=60) as (url, _):
        client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        deadline = time.monotonic() + 15
        while (current := client.batches.retrieve(batch.id)).status != "cancelled":
            assert time.monotonic() < deadline, f"still {current.status}"
            time.sleep(0.05)
        assert current.request_counts is not None
        assert (current.request_counts.total, current.request_counts.failed) == (3, 3)
        assert current.error_file_id is not None and current.output_file_id is None
        errors = entries(client.files.content(current.error_file_id).content)
    assert sorted(e["custom_id"] for e in errors) == ["k0", "k1", "k2"]
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
