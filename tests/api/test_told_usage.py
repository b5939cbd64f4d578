"""What a client is told it used is what it is charged: under a hard budget an upstream's usage past what the
request could use is held (`margin.pipeline.ceiling`), and the usage the client gets (a stream's usage event, a
whole answer's `usage`) says the row's counts. Before, the upstream's usage event went out as it came (10^9
tokens, or 10^6 cached tokens of a 5-token prompt) while the row was held at 16 output tokens; a usage that is
the row's still goes out as it came (its other fields kept). `margin serve` over real HTTP, a fake upstream on a
thread, the official openai SDK as the client."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import openai

from margin.ledger.models import ledger
from tests.helpers import ledger_columns, margin_serve, upstream_config
from tests.servers import http_thread, recording_handler, reply_events, reply_json

BIG = 10**9
# the upstream's usage for each request, picked by the number its prompt ends with
USAGES: list[dict[str, Any]] = [
    {"prompt_tokens": BIG, "completion_tokens": BIG, "total_tokens": 2 * BIG},  # inflated: held
    {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "prompt_tokens_details": {"cached_tokens": 10**6}},
    {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "cost": 0.25},  # the row's: as it came
    {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 11, "cost": 0.5},  # its own total: as it came
]
COLUMNS = (ledger.c.input_tokens, ledger.c.output_tokens, ledger.c.cached_tokens, ledger.c.usage_source)
BUDGET = {"name": "all", "scope": {"kind": "global"}, "usd": "100", "period": "day"}


def _answer(handler: BaseHTTPRequestHandler, body: Any) -> None:
    usage = USAGES[int(body["messages"][0]["content"].split()[-1])]
    base = {"id": "x", "created": 0, "model": body["model"]}
    if not body.get("stream"):
        choice = {"index": 0, "message": {"role": "assistant", "content": "a b c"}, "finish_reason": "stop"}
        reply_json(handler, 200, {**base, "object": "chat.completion", "choices": [choice], "usage": usage})
        return
    chunk = {**base, "object": "chat.completion.chunk"}
    deltas = [{"index": 0, "delta": {"content": word}, "finish_reason": None} for word in ("a ", "b ", "c")]
    events = [{**chunk, "choices": [delta]} for delta in deltas]
    events.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    reply_events(handler, [*events, {**chunk, "choices": [], "usage": usage}])


def _told(usage: Any) -> tuple[int, int, int, Any, int]:
    details = usage.prompt_tokens_details
    cached = details.cached_tokens if details is not None and details.cached_tokens is not None else 0
    return (
        usage.prompt_tokens,
        usage.completion_tokens,
        cached,
        (usage.model_extra or {}).get("cost"),
        usage.total_tokens,
    )


def test_the_usage_a_client_is_told_is_what_its_row_is_charged(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    told: list[tuple[int, int, int, Any, int]] = []  # what each answer's usage said, in the order of the rows
    with http_thread(recording_handler([], _answer)) as upstream:
        price = {"input": "1", "output": "1", "cached_input": "0.1"}
        path = upstream_config(tmp_path, url, upstream, {"price": price}, budgets=[BUDGET])
        with margin_serve(None, tmp_path / "serve.log", path) as (base, _):
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
            for index in range(len(USAGES)):
                messages: Any = [{"role": "user", "content": f"my prompt {index}"}]
                answer = client.chat.completions.create(model="m", messages=messages, max_tokens=16)
                assert answer.choices[0].message.content == "a b c" and answer.usage is not None
                told.append(_told(answer.usage))
                stream = client.chat.completions.create(
                    model="m", messages=messages, max_tokens=16, stream=True, stream_options={"include_usage": True}
                )
                sent = [chunk.usage for chunk in stream if chunk.usage is not None]
                assert len(sent) == 1  # one usage event: the upstream's, saying the row's counts
                told.append(_told(sent[0]))
    rows = ledger_columns(url, *COLUMNS)
    assert len(rows) == len(told) == 8
    assert [row[3] for row in rows] == ["clamped"] * 2 + ["backend"] * 6
    assert all(row[1] == 16 and 0 < row[0] < 200 for row in rows[:2])  # held at max_tokens and the bytes sent
    assert all(row[:3] == (5, 3, 5) for row in rows[2:4])  # cached tokens: at most the whole prompt
    # before: (10^9, 10^9, 0) and 10^6 cached tokens for the rows held at 16 and 5
    assert [told_usage[:3] for told_usage in told] == [row[:3] for row in rows]
    assert [told_usage[3] for told_usage in told] == [None] * 4 + [0.25] * 2 + [0.5] * 2  # the row's: as it came
    # a total that is not prompt + completion is the provider's own: not a reason to write its usage again
    assert [told_usage[4] for told_usage in told] == [row[0] + row[1] for row in rows[:2]] + [8] * 4 + [11] * 2
