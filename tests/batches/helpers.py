"""Batch test helpers: JSONL files, the SDK on an in-process gateway, and waiting for a job to end."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import openai
import orjson

from margin.batches.progress import DEFERRAL
from margin.batches.store import line_request_id
from margin.config import Settings
from tests.helpers import Gateway, fake_settings

if TYPE_CHECKING:
    import httpx2

FINAL = {"completed", "failed", "expired", "cancelled"}


def batch_settings(db: Path, **batches: Any) -> Settings:
    return fake_settings(db, batches={"poll_s": 0.02, "objective": "asap", **batches})


def line(custom_id: str, content: str = "hello there", model: str = "fake-chat", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": content}], **body},
    }


def jsonl(*items: Any) -> bytes:
    return b"".join((item if isinstance(item, bytes) else orjson.dumps(item)) + b"\n" for item in items)


def sdk(gw: Gateway, key: str = "unused") -> openai.AsyncOpenAI:
    # the SDK takes an httpx.AsyncClient too (it checks for either at runtime); its annotation names only httpx2's
    http = cast("httpx2.AsyncClient", gw.http)
    return openai.AsyncOpenAI(api_key=key, base_url="http://localhost/v1", http_client=http, max_retries=0)


async def wait_final(client: openai.AsyncOpenAI, batch_id: str, seconds: float = 30.0) -> Any:
    for _ in range(int(seconds / 0.02)):
        batch = await client.batches.retrieve(batch_id)
        if batch.status in FINAL:
            return batch
        await asyncio.sleep(0.02)
    raise AssertionError(f"batch {batch_id} still {batch.status}")


def entries(content: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in content.splitlines() if raw.strip()]


async def run_job(client: openai.AsyncOpenAI, content: bytes, name: str = "in.jsonl") -> Any:
    """Upload `content`, run it as a chat job and wait for it to end."""
    upload = await client.files.create(file=(name, content), purpose="batch")
    batch = await client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return await wait_final(client, batch.id)


def attempt_of(batch_id: str, line: int, request_id: str, most_tries: int = 10, most_deferrals: int = 1000) -> int:
    """A line's last attempt (packed: margin.batches.progress.DEFERRAL) from the request id its entry in the job's
    output or error file names: an ended job's line rows, which had it, are deleted."""
    for deferred in range(most_deferrals + 1):
        for tried in range(1, most_tries + 1):
            if line_request_id(batch_id, line, deferred * DEFERRAL + tried) == request_id:
                return deferred * DEFERRAL + tried
    raise AssertionError(f"no attempt of line {line} of {batch_id} has the request id {request_id}")


def read_db(db: Path, query: str, *args: Any) -> list[Any]:
    """The rows of one query on a SQLite ledger that a running gateway writes (a connection of its own)."""
    connection = sqlite3.connect(db)
    try:
        return connection.execute(query, args).fetchall()
    finally:
        connection.close()
