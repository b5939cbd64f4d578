"""Token ids sent to an upstream that reports no usage: they are tokens already, so the row counts them as they
are (they were left out of the estimate made from the text: an embedding of ids was recorded as 0 input tokens
and cost nothing, and its budget settled at $0), and the budget settles at the row's cost."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from margin.governance.admission import counter_name, window
from tests.helpers import Gateway, fake_settings, gateway
from tests.servers import http_thread, read_json, reply_json

PRICE = {"input": "1000", "output": "0", "version": "t"}  # $0.001 an input token, 10^6 nanousd
PER_TOKEN = 1_000_000
BUDGET = {"name": "g", "scope": {"kind": "global"}, "usd": "10", "period": "month"}


class NoUsage(BaseHTTPRequestHandler):
    """An OpenAI-compatible upstream that answers without `usage`, as many self-hosted servers do."""

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        body = read_json(self)
        if self.path.endswith("/embeddings"):
            inputs = body["input"] if isinstance(body["input"], list) and isinstance(body["input"][0], list) else [0]
            data = [{"object": "embedding", "index": i, "embedding": [0.5, 0.25]} for i in range(len(inputs))]
            reply_json(self, 200, {"object": "list", "data": data, "model": body["model"]})
            return
        choice = {"index": 0, "text": "ok", "logprobs": None, "finish_reason": "length"}
        reply_json(self, 200, {"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                               "choices": [choice]})  # fmt: skip


@pytest.fixture
def upstream() -> Iterator[str]:
    with http_thread(NoUsage) as url:
        yield url + "/v1"


async def spent(gw: Gateway) -> int:
    """The budget's settled spend (nanousd); nothing is left reserved."""
    store = gw.services.governance.store
    assert await store.pending() == 0
    budget = gw.services.governance.rules.budgets[0]
    name = counter_name(budget, window(budget.period, datetime.now(UTC))[0])
    used, reserved = (await store.counters([name]))[name]
    assert reserved == 0
    return used


@pytest.mark.parametrize(
    ("path", "field", "ids", "tokens"),
    [
        ("/v1/embeddings", "input", [1, 2, 3], 3),
        ("/v1/embeddings", "input", [[1, 2], [3], [4, 5, 6, 7]], 7),
        ("/v1/completions", "prompt", [5, 6, 7, 8, 9], 5),
        ("/v1/completions", "prompt", [[5, 6], [7, 8, 9, 10]], 6),
    ],
)
async def test_token_ids_are_counted_as_input_when_the_upstream_reports_no_usage(
    db_path: Path, upstream: str, path: str, field: str, ids: list[Any], tokens: int
) -> None:
    models = {
        "embed": {"backend": "up", "kind": "embedding", "price": PRICE},
        "gen": {"backend": "up", "price": PRICE},
    }
    settings = fake_settings(
        db_path,
        backends={"up": {"kind": "openai", "base_url": upstream, "retries": {"attempts": 0}}},
        models=models,
        budgets=[BUDGET],
    )
    model = "embed" if path.endswith("embeddings") else "gen"
    async with gateway(settings) as gw:
        body = {"model": model, field: ids, **({"max_tokens": 1} if model == "gen" else {})}
        answer = await gw.http.post(path, json=body)
        assert answer.status_code == 200, answer.text
        [row] = await gw.rows()
        # an embedding's count is exact; a completion's output ("ok") is estimated: 1 token, priced at $0
        expected = (tokens, 0, "token_ids") if model == "embed" else (tokens, 1, "estimated")
        assert (row.input_tokens, row.output_tokens, row.usage_source) == expected
        assert row.cost_nanousd == tokens * PER_TOKEN
        assert await spent(gw) == row.cost_nanousd
