"""Margin's own rate limits pace a job's lines instead of failing them: a line its admission refuses (429
`rate_limit_exceeded`, with retry-after) waits until then, and that refusal is not one of its
`batches.max_attempts` (a 90-line job against `rpm: 60` used to end with 25 lines failed in 6 s)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import yaml

from tests.batches.helpers import FINAL, attempt_of, entries, jsonl, line, read_db
from tests.helpers import margin_serve
from tests.security.conftest import FAKE_CONFIG

RPM = 120  # a minute's worth at once (GCRA), then one every 0.5 s
LINES = RPM + 16


def _config(tmp_path: Path) -> Path:
    config: dict[str, Any] = {
        **FAKE_CONFIG,
        "limits": [{"scope": {"kind": "global"}, "rpm": RPM}],
        "batches": {"objective": "asap", "concurrency": 8, "poll_s": 0.05, "max_attempts": 2},
    }
    path = tmp_path / "margin.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_job_bigger_than_an_rpm_limit_completes_every_line(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with margin_serve(db, tmp_path / "serve.log", config=_config(tmp_path), ready_s=60) as (url, _):
        client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        content = jsonl(*(line(f"r{n}") for n in range(LINES)))
        upload = client.files.create(file=("in.jsonl", content), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 60
        while (current := client.batches.retrieve(batch.id)).status not in FINAL:
            assert time.monotonic() < deadline, current.status
            time.sleep(0.1)
        assert current.status == "completed", current
        assert current.request_counts is not None
        assert (current.request_counts.completed, current.request_counts.failed) == (LINES, 0)
        assert current.output_file_id is not None and current.error_file_id is None
        answered = entries(client.files.content(current.output_file_id).content)
    assert len(answered) == LINES and all(entry["response"]["status_code"] == 200 for entry in answered)
    from margin.batches.progress import deferrals, tries  # after the job: on the old code, the job fails first

    attempts = [attempt_of(batch.id, int(e["custom_id"][1:]) + 1, e["response"]["request_id"]) for e in answered]
    assert all(tries(n) == 1 for n in attempts)  # a refusal waited out is no try (max_attempts is 2)
    assert sum(deferrals(n) for n in attempts) >= 1  # the limiter did refuse lines: they waited
    rows = read_db(db, "SELECT request_id, status FROM ledger WHERE batch_id = ?", batch.id)
    ids = [request_id for request_id, _ in rows]
    assert len(ids) == len(set(ids))  # one row per request id, however many times a line was refused
    assert sum(status == "ok" for _, status in rows) == LINES
    query = "SELECT count(*), coalesce(sum(cost_nanousd), 0) FROM ledger WHERE batch_id = ? AND error_code = ?"
    ((refused, cost),) = read_db(db, query, batch.id, "rate_limit_exceeded")
    assert (refused, cost) == (sum(deferrals(n) for n in attempts), 0)  # a row each, $0
    # after a refusal the job waits, then sends one line, one more per line let through: not all 8 at once
    # (pausing alone: 28 refusals for these 16 lines over the limit; this: 13)
    assert refused <= 3 * (LINES - RPM) // 2


def test_an_upstream_429_is_still_a_try() -> None:
    from margin.batches.inprocess import Reply
    from margin.batches.runner import _limiter_refused

    own = b'{"error": {"code": "rate_limit_exceeded", "type": "rate_limit_error"}}'
    upstream = b'{"error": {"code": "upstream_rate_limited", "type": "rate_limit_error"}}'
    assert _limiter_refused(Reply(429, {"retry-after": "1"}, own))
    assert not _limiter_refused(Reply(429, {"retry-after": "1"}, upstream))
    assert not _limiter_refused(Reply(429, {}, b"not json"))
    assert not _limiter_refused(Reply(429, {}, b"[1]"))
    assert not _limiter_refused(Reply(503, {}, own))
