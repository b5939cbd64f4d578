"""Batch jobs of Responses API lines (`url: /v1/responses`, as OpenAI's Batch API takes them): each line runs
through `POST /v1/responses` in process, its output is a Response object, its row names the endpoint
`responses`; a line margin cannot honour is an error entry naming the field. Before: the job was refused (422)
and its lines could not be validated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from margin.batches.planning import line_tokens
from tests.batches.helpers import batch_settings, entries, jsonl, sdk, wait_final
from tests.helpers import gateway


def _line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": {"model": "fake-chat", **body}}


async def test_a_responses_job_runs_each_line_through_the_responses_endpoint(db_path: Path) -> None:
    async with gateway(batch_settings(db_path)) as gw:
        client = sdk(gw)
        content = jsonl(
            _line("a", input="question one", instructions="be brief"),
            _line("b", input=[{"role": "user", "content": [{"type": "input_text", "text": "question two"}]}]),
            _line("c", input="hi", previous_response_id="resp_1"),
        )
        upload = await client.files.create(file=("in.jsonl", content), purpose="batch")
        created = await client.batches.create(
            input_file_id=upload.id, endpoint="/v1/responses", completion_window="24h"
        )
        done = await wait_final(client, created.id)
        assert done.status == "completed" and done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
        assert done.output_file_id is not None and done.error_file_id is not None
        output = {e["custom_id"]: e for e in entries((await client.files.content(done.output_file_id)).content)}
        for custom_id in ("a", "b"):
            body = output[custom_id]["response"]["body"]
            assert body["object"] == "response" and body["status"] == "completed"
            assert body["output"][0]["content"][0]["text"] == "tok " * 5
        (error,) = entries((await client.files.content(done.error_file_id)).content)
        assert error["custom_id"] == "c" and error["error"]["param"] == "previous_response_id"
        rows = [r for r in await gw.rows() if r.batch_id == created.id]
        assert sorted(r.endpoint for r in rows) == ["responses", "responses"]
        by_id = {r.request_id: r for r in rows}
        for custom_id in ("a", "b"):
            usage = output[custom_id]["response"]["body"]["usage"]
            row = by_id[output[custom_id]["response"]["request_id"]]
            assert (usage["input_tokens"], usage["output_tokens"]) == (row.input_tokens, row.output_tokens)


def test_a_responses_line_is_sized_with_its_output() -> None:
    """A Responses line has `input` as an embedding line does: sized with its output limit (or the assumed
    output), not as an embedding (no output)."""
    assert line_tokens(b'{"model":"m","input":"hi","max_output_tokens":500}', 100) >= 500
    assert line_tokens(b'{"model":"m","input":[{"role":"user","content":"hi"}]}', 100) >= 100
    assert line_tokens(b'{"model":"m","input":"hi"}', 100) < 100  # an embedding's fields only
