"""An upstream's usage that does not count the prompt is no usage: the request is counted as if the upstream
reported none (its prompt and answer counted or estimated), never metered at 0 tokens and $0 as the backend's own
count. Before, `{"total_tokens": 5000}`, counts sent as strings or a negative prompt count were rows of 0 input
tokens (and 0 output where the answer's count was junk too) at $0; a usage with no `completion_tokens` metered
no answer. A stream's such usage is not forwarded either: a client that asked for usage gets the metered one
(it got `{"total_tokens": 5000}` alone). `margin serve` over real HTTP, a fake upstream on a thread."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import yaml

from margin.ledger.models import ledger
from tests.helpers import ledger_columns, margin_serve, upstream_config
from tests.servers import http_thread, recording_handler, reply_events, reply_json

USAGES: list[Any] = [
    {"total_tokens": 5000},  # total alone
    {"prompt_tokens": "3000", "completion_tokens": "2000", "total_tokens": "5000"},  # strings
    {"prompt_tokens": -3000, "completion_tokens": 2000},  # negative
    {"prompt_tokens": 3000, "completion_tokens": "lots"},  # an answer's count that is not one
    None,  # no usage: what the four above are metered as
    {"prompt_tokens": 3000, "total_tokens": 5000},  # no completion_tokens: the rest of the total
]
PROMPT = "hello " * 100
ANSWER = "word " * 50
COLUMNS = (ledger.c.input_tokens, ledger.c.output_tokens, ledger.c.usage_source, ledger.c.cost_nanousd)


def _next_usage(handler: BaseHTTPRequestHandler, body: Any) -> None:
    usage = USAGES[int(body["messages"][0]["content"].split()[-1])]
    if body.get("stream"):
        head = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
        delta = {"index": 0, "delta": {"content": ANSWER}, "finish_reason": "stop"}
        reply_events(handler, [{**head, "choices": [delta]}, {**head, "choices": [], "usage": usage}])
        return
    choice = {"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}
    answer = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice]}
    reply_json(handler, 200, {**answer, "usage": usage})


def test_a_usage_without_a_prompt_count_is_no_usage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with http_thread(recording_handler([], _next_usage)) as upstream:
        path = upstream_config(tmp_path, url, upstream)
        with margin_serve(None, tmp_path / "serve.log", path) as (base, _):
            for index in range(len(USAGES)):
                body = {"model": "m", "messages": [{"role": "user", "content": f"{PROMPT}{index}"}]}
                assert httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30).status_code == 200
            asks = {**body, "messages": [{"role": "user", "content": f"{PROMPT}0"}], "stream": True}
            streamed = httpx.post(
                f"{base}/v1/chat/completions", json={**asks, "stream_options": {"include_usage": True}}, timeout=30
            )
    events = [orjson.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    sent = [event["usage"] for event in events if event.get("usage")]
    rows = ledger_columns(url, *COLUMNS)
    counted = rows[4]
    assert counted[2] != "backend" and counted[0] > 0 and counted[1] > 0 and counted[3] > 0
    assert rows[:4] == [counted] * 4  # before: (0, 0, backend, 0) ×2, (0, 2000, backend, …), (3000, 0, backend, …)
    assert rows[5] == (3000, 2000, "backend", 5_000_000)  # before: (3000, 0): the answer was free
    assert rows[6][:2] == counted[:2] and rows[6][2] != "backend"  # the stream's (its answer counted as one)
    assert sent == [{"prompt_tokens": counted[0], "completion_tokens": counted[1], "total_tokens": sum(counted[:2])}]


ANTHROPIC_USAGES: list[Any] = [None, {"input_tokens": "300", "output_tokens": "20"}]


def _anthropic_answer(handler: BaseHTTPRequestHandler, body: Any, usage: Any) -> None:
    """An Anthropic message whose usage is missing, or counts as strings (a broken proxy in front of Anthropic)."""
    text = {"type": "text", "text": ANSWER}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"], "content": [text],
               "stop_reason": "end_turn", "stop_sequence": None}  # fmt: skip
    reply_json(handler, 200, message if usage is None else {**message, "usage": usage})


def test_an_anthropic_answer_without_counts_is_counted(tmp_path: Path) -> None:
    """Before: both rows 0 input and 0 output tokens at $0, labelled `backend`."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    seen: list[Any] = []  # the upstream's requests: each answer's usage is the one at their count

    def answer(handler: BaseHTTPRequestHandler, body: Any) -> None:
        _anthropic_answer(handler, body, ANTHROPIC_USAGES[len(seen) - 1])

    with http_thread(recording_handler(seen, answer)) as upstream:
        config = {
            "storage": {"ledger": url, "flush_interval_ms": 50},
            "backends": {"claude": {"kind": "anthropic", "base_url": upstream + "/v1", "api_key_env": "HOME"}},
            "models": {"c": {"backend": "claude", "price": {"input": "1", "output": "1"}}},
        }
        path = tmp_path / "margin.yaml"
        path.write_text(yaml.safe_dump(config))
        with margin_serve(None, tmp_path / "serve.log", path) as (base, _):
            for _ in ANTHROPIC_USAGES:
                body = {"model": "c", "messages": [{"role": "user", "content": PROMPT}]}
                reply = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30)
                assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == ANSWER
    rows = ledger_columns(url, *COLUMNS)
    assert len(rows) == 2 and rows[0] == rows[1]
    assert rows[0][2] != "backend" and rows[0][0] > 0 and rows[0][1] > 0 and rows[0][3] > 0


EMBEDDING_USAGES: list[Any] = [{"total_tokens": 7}, {"total_tokens": "7"}, {"total_tokens": -7}]


def test_an_embeddings_total_alone_counts_its_input(tmp_path: Path) -> None:
    """An embedding's input is all its tokens: `{"total_tokens": 7}` (no `prompt_tokens`) is 7 input tokens, the
    upstream's count (before: no usage, the row estimated); a junk total is still no usage."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    seen: list[Any] = []

    def answer(handler: BaseHTTPRequestHandler, body: Any) -> None:
        data = [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}]
        usage = EMBEDDING_USAGES[len(seen) - 1]
        reply_json(handler, 200, {"object": "list", "data": data, "model": body["model"], "usage": usage})

    with http_thread(recording_handler(seen, answer)) as upstream:
        config = {
            "storage": {"ledger": url, "flush_interval_ms": 50},
            "backends": {"up": {"kind": "openai", "base_url": upstream + "/v1"}},
            "models": {"e": {"backend": "up", "kind": "embedding", "price": {"input": "1000", "output": "0"}}},
        }
        path = tmp_path / "margin.yaml"
        path.write_text(yaml.safe_dump(config))
        with margin_serve(None, tmp_path / "serve.log", path) as (base, _):
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
            for _ in EMBEDDING_USAGES:
                reply = client.embeddings.create(model="e", input=PROMPT, encoding_format="float")
                assert reply.data[0].embedding == [0.5, 0.25]
    rows = ledger_columns(url, *COLUMNS)
    assert rows[0] == (7, 0, "backend", 7_000_000)  # $1000/M × 7; before: (150, 0, estimated, $0.15)
    assert rows[1] == rows[2] and rows[1][2] == "estimated" and rows[1][0] > 7
