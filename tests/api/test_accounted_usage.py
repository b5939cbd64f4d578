"""A whole answer's `usage` is what margin accounted (the ledger row's counts) wherever margin could not read the
upstream's: usage that counts no prompt (`{"completion_tokens": 5}`), junk counts, none at all, or an `anthropic`
backend's answer without usage; as a stream's usage chunk margin writes already said. Before, the JSON answer
went out as it came (the junk, or no `usage` key: OpenAI's answer always has one) while the row was estimated.
A usage margin reads goes out as it came. `margin serve` over real HTTP, fake upstreams on threads, the official
openai SDK as the client."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import openai
import yaml

from margin.ledger.models import ledger
from tests.helpers import ledger_columns, margin_serve
from tests.servers import http_thread, recording_handler, reply_json

PROMPT = "hello " * 100
ANSWER = "word " * 50
# the openai upstream's usage for each request, picked by the number its prompt ends with
USAGES: list[Any] = [
    {"completion_tokens": 5},  # no prompt count
    {"prompt_tokens": "30", "completion_tokens": 5, "total_tokens": 35},  # a count sent as a string
    None,  # none
    {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35},  # read: goes out as it came
]
# an anthropic upstream's stream: the usage of its message_start and message_delta
STREAMED_USAGES: list[tuple[Any, Any]] = [
    ({"input_tokens": "300", "output_tokens": 1}, {"output_tokens": "20"}),  # counts as strings
    (None, None),  # none
]
COLUMNS = (ledger.c.input_tokens, ledger.c.output_tokens, ledger.c.usage_source)


def _openai_answer(handler: BaseHTTPRequestHandler, body: Any) -> None:
    if "prompt" in body:  # a completion
        usage = USAGES[int(body["prompt"].split()[-1])]
        choice = {"index": 0, "text": ANSWER, "finish_reason": "stop", "logprobs": None}
        answer = {"id": "x", "object": "text_completion", "created": 0, "model": body["model"], "choices": [choice]}
    else:
        usage = USAGES[int(body["messages"][0]["content"].split()[-1])]
        choice = {"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}
        answer = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice]}
    reply_json(handler, 200, answer if usage is None else {**answer, "usage": usage})


def _anthropic_answer(handler: BaseHTTPRequestHandler, body: Any) -> None:
    """A message without usage, or a stream whose usage counts no prompt (`STREAMED_USAGES`)."""
    text = {"type": "text", "text": ANSWER}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"], "content": [text],
               "stop_reason": "end_turn", "stop_sequence": None}  # fmt: skip
    if not body.get("stream"):
        reply_json(handler, 200, message)
        return
    content = body["messages"][0]["content"]
    text_sent = content if isinstance(content, str) else content[0]["text"]
    started, ended = STREAMED_USAGES[int(text_sent.split()[-1])]
    events: list[Any] = [
        {"type": "message_start", "message": {**message, "content": [], "stop_reason": None, "usage": started}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ANSWER}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": ended},
        {"type": "message_stop"},
    ]
    handler.send_response(200)
    handler.send_header("content-type", "text/event-stream")
    handler.end_headers()
    for event in events:
        handler.wfile.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
    handler.wfile.flush()
    handler.close_connection = True


def _counts(usage: Any) -> tuple[int, int, int]:
    return usage.prompt_tokens, usage.completion_tokens, usage.total_tokens


def test_a_whole_answer_says_the_usage_margin_accounted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    told: list[tuple[int, int, int]] = []  # what each answer's usage said, in the order of the rows
    with (
        http_thread(recording_handler([], _openai_answer)) as upstream,
        http_thread(recording_handler([], _anthropic_answer)) as claude,
    ):
        config = {
            "storage": {"ledger": url, "flush_interval_ms": 50},
            "backends": {
                "up": {"kind": "openai", "base_url": upstream + "/v1"},
                "claude": {"kind": "anthropic", "base_url": claude + "/v1", "api_key_env": "HOME"},
            },
            "models": {
                "m": {"backend": "up", "price": {"input": "1", "output": "1"}},
                "c": {"backend": "claude", "price": {"input": "1", "output": "1"}},
            },
        }
        path = tmp_path / "margin.yaml"
        path.write_text(yaml.safe_dump(config))
        with margin_serve(None, tmp_path / "serve.log", path) as (base, _):
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
            for index in range(len(USAGES)):
                content = f"{PROMPT}{index}"
                answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": content}])
                assert answer.choices[0].message.content == ANSWER and answer.usage is not None
                told.append(_counts(answer.usage))
            completion = client.completions.create(model="m", prompt=f"{PROMPT}0")
            assert completion.usage is not None
            told.append(_counts(completion.usage))
            whole = client.chat.completions.create(model="c", messages=[{"role": "user", "content": PROMPT}])
            assert whole.usage is not None  # before: no `usage` at all
            told.append(_counts(whole.usage))
            for index in range(len(STREAMED_USAGES)):
                stream = client.chat.completions.create(
                    model="c",
                    messages=[{"role": "user", "content": f"{PROMPT}{index}"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
                sent = [chunk.usage for chunk in stream if chunk.usage is not None]
                assert len(sent) == 1  # margin's, once: the upstream's junk is not forwarded beside it
                told.append(_counts(sent[0]))
    rows = ledger_columns(url, *COLUMNS)
    assert len(rows) == len(told) == 8
    assert told == [(row[0], row[1], row[0] + row[1]) for row in rows]  # before: {"completion_tokens": 5}, "30", none
    assert rows[3] == (30, 5, "backend")  # a usage margin reads is the upstream's, as it came
    estimated = [row for index, row in enumerate(rows) if index != 3]
    assert all(row[2] == "estimated" and row[0] > 100 and row[1] > 10 for row in estimated)
