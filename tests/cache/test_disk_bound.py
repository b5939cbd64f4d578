"""`cache.max_disk_bytes` bounds the exact cache's table in the SQLite ledger file, through `margin serve`: a client
sending distinct cacheable requests (each a new prompt) grew that table by one entry each, for `ttl_s` (up to 366
days), since only expired rows were purged. Now past the bound the oldest written entries go, so the table stays
under it; the newest answer is still served from it after a restart (memory empty), the oldest is a miss."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import openai
import yaml

from tests.helpers import margin_serve, wait_ledger_row
from tests.servers import http_thread, recording_handler, reply_json

BOUND = 4096
ASKED = 60


def _answer(handler: Any, body: dict[str, Any]) -> None:
    message = {"role": "assistant", "content": "the answer to " + body["messages"][0]["content"]}
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    head = {"id": "up", "object": "chat.completion", "created": 0}
    reply_json(handler, 200, {**head, "choices": [choice], "usage": usage})


def _ask(client: openai.OpenAI, index: int) -> tuple[str | None, str | None, str]:
    body: Any = {"role": "user", "content": f"question number {index}"}
    reply = client.chat.completions.with_raw_response.create(model="m", temperature=0, messages=[body])
    return reply.headers.get("x-margin-cache"), reply.parse().choices[0].message.content, reply.headers["x-request-id"]


def _table_bytes(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as connection:
        sql = "SELECT COUNT(*), COALESCE(SUM(length(key) + length(value)), 0) FROM cache_entries"
        count, size = connection.execute(sql).fetchone()
    return int(count), int(size)


def test_distinct_cacheable_requests_keep_the_table_under_its_bound(tmp_path: Path) -> None:
    bodies: list[Any] = []
    db = tmp_path / "ledger.db"
    with http_thread(recording_handler(bodies, _answer)) as base:
        config = {
            "storage": {"flush_interval_ms": 10},
            "cache": {"max_disk_bytes": BOUND},
            "backends": {"up": {"kind": "openai", "base_url": f"{base}/v1", "retries": {"attempts": 0}}},
            "models": {"m": {"backend": "up", "price": {"input": "1", "output": "1"}}},
        }
        (tmp_path / "margin.yaml").write_text(yaml.safe_dump(config))
        with margin_serve(db, tmp_path / "serve.log", config=tmp_path / "margin.yaml") as (url, _):
            client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30)
            answers = [_ask(client, index) for index in range(ASKED)]
            again = _ask(client, ASKED - 1)
            wait_ledger_row(db, url, again[2])
            client.close()
        rows, size = _table_bytes(db)  # the server stopped: its queued writes are in
        with margin_serve(db, tmp_path / "again.log", config=tmp_path / "margin.yaml") as (url, _):
            client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30)
            newest, oldest = _ask(client, ASKED - 1), _ask(client, 0)
            client.close()
    assert [a[:2] for a in answers] == [("miss", f"the answer to question number {i}") for i in range(ASKED)]
    assert again[:2] == ("hit-exact", f"the answer to question number {ASKED - 1}")
    assert 0 < size <= BOUND and rows < ASKED  # before: all 60, about 13.7 kB (3.4 times the bound)
    assert newest[:2] == ("hit-exact", f"the answer to question number {ASKED - 1}")  # from the table: a new process
    assert oldest[:2] == ("miss", "the answer to question number 0")  # written first, gone first
    assert len(bodies) == ASKED + 1
