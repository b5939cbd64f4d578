"""Margin's own rate limits pace a job's lines instead of failing them: a line its admission refuses (429
`rate_limit_exceeded`, with retry-after) waits until then, and that refusal is not one of its
`batches.max_attempts` (a 90-line job against `rpm: 60` used to end with 25 lines failed in 6 s). The same for
a job of `/v1/messages` lines: Anthropic's error shape has no code, and their refusals used to be tries (the
job ended with lines failed); the worker tells margin's refusal by the error the request path raised."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest
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


def _messages_line(custom_id: str) -> dict[str, Any]:
    body = {"model": "fake-chat", "max_tokens": 20, "messages": [{"role": "user", "content": "hello there"}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/messages", "body": body}


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/messages"])
def test_a_job_bigger_than_an_rpm_limit_completes_every_line(endpoint: Any, tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with margin_serve(db, tmp_path / "serve.log", config=_config(tmp_path), ready_s=60) as (url, _):
        client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        each = line if endpoint == "/v1/chat/completions" else _messages_line
        content = jsonl(*(each(f"r{n}") for n in range(LINES)))
        upload = client.files.create(file=("in.jsonl", content), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window="24h")
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
    """Margin's refusal is told by the error the request path raised (`Reply.refused`), never by the answer's
    text: an upstream's 429 whose body reads as margin's is a try, and so is one in any shape."""
    from margin.batches.inprocess import Reply
    from margin.batches.runner import _limiter_refused
    from margin.errors import Overloaded, RateLimited, UpstreamRateLimited

    own = b'{"error": {"code": "rate_limit_exceeded", "type": "rate_limit_error"}}'
    anthropic = b'{"type": "error", "error": {"type": "rate_limit_error", "message": "rate limit reached"}}'
    limiter = RateLimited("rate limit reached", headers={"retry-after": "1"})
    assert _limiter_refused(Reply(429, {"retry-after": "1"}, own, limiter))
    assert _limiter_refused(Reply(429, {"retry-after": "1"}, anthropic, limiter))  # no code in its shape
    assert not _limiter_refused(Reply(429, {"retry-after": "1"}, own))  # the text alone: an upstream's words
    assert not _limiter_refused(Reply(429, {}, own, UpstreamRateLimited("slow down", code="rate_limit_exceeded")))
    assert not _limiter_refused(Reply(429, {}, own, RateLimited("streams", code="too_many_streams")))
    assert not _limiter_refused(Reply(503, {}, own, Overloaded("busy")))
