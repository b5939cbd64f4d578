"""Batch jobs of Messages API lines (`url: /v1/messages`, in OpenAI's Batch API format): each line runs through
`POST /v1/messages` in process, its output is an Anthropic Message, its row names the endpoint `messages`; a
line margin cannot honour is an error entry naming the field. Before: the job was refused (422)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.batches.helpers import batch_settings, entries, jsonl, sdk, wait_final
from tests.helpers import gateway


def _line(custom_id: str, **body: Any) -> dict[str, Any]:
    body = {"model": "fake-chat", "max_tokens": 20, **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/messages", "body": body}


async def test_a_messages_job_runs_each_line_through_the_messages_endpoint(db_path: Path) -> None:
    async with gateway(batch_settings(db_path)) as gw:
        client = sdk(gw)
        content = jsonl(
            _line("a", system="be brief", messages=[{"role": "user", "content": "question one"}]),
            _line("b", messages=[{"role": "user", "content": [{"type": "text", "text": "question two"}]}]),
            _line("c", messages=[{"role": "user", "content": "hi"}], mcp_servers=[{"type": "url"}]),
        )
        upload = await client.files.create(file=("in.jsonl", content), purpose="batch")
        created = await client.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/messages",  # type: ignore[arg-type]
            completion_window="24h",
        )
        done = await wait_final(client, created.id)
        assert done.status == "completed" and done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
        assert done.output_file_id is not None and done.error_file_id is not None
        output = {e["custom_id"]: e for e in entries((await client.files.content(done.output_file_id)).content)}
        for custom_id in ("a", "b"):
            body = output[custom_id]["response"]["body"]
            assert body["type"] == "message" and body["stop_reason"] == "end_turn"
            assert body["content"] == [{"type": "text", "text": "tok " * 5}]
        (error,) = entries((await client.files.content(done.error_file_id)).content)
        assert error["custom_id"] == "c" and error["error"]["param"] == "mcp_servers"
        rows = [r for r in await gw.rows() if r.batch_id == created.id]
        assert sorted(r.endpoint for r in rows) == ["messages", "messages"]
        by_id = {r.request_id: r for r in rows}
        for custom_id in ("a", "b"):
            usage = output[custom_id]["response"]["body"]["usage"]
            row = by_id[output[custom_id]["response"]["request_id"]]
            assert (usage["input_tokens"], usage["output_tokens"]) == (row.input_tokens, row.output_tokens)
