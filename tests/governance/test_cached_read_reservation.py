"""A hard budget reserves what a prompt's cache reads may cost where they are dearer than fresh input. genai-prices
has such a model (openrouter's `~deepseek/deepseek-pro-latest`: input $0.225, cache reads $0.23 per million), and
an upstream may report the whole prompt as read from its cache; the reservation priced the prompt at the input
rate, so a request reserved $0.0225 was charged $0.0230 and spent a hard budget past its limit (a configured
`cached_input` above `input` is reserved the same way: `tests/economics/test_price_bounds.py`). `margin serve` over
real HTTP, a fake upstream on a thread."""

from __future__ import annotations

from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from margin.ledger.models import ledger
from tests.governance.conftest import make_key
from tests.helpers import chat_once, ledger_columns, reserved_input
from tests.servers import http_thread, recording_handler, reply_json

BODY = {"model": "d", "messages": [{"role": "user", "content": "x" * 100_000}], "max_tokens": 1}
INPUT, CACHED, OUTPUT = Decimal("0.225"), Decimal("0.23"), Decimal(8)  # genai-prices' rates, USD per million


def _reads_the_prompt(handler: BaseHTTPRequestHandler, body: Any) -> None:
    """The whole prompt from the upstream's cache (the most tokens it may report: margin holds them at the
    request's bound)."""
    usage = {"prompt_tokens": 10**9, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 10**9}}
    choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    answer = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice]}
    reply_json(handler, 200, {**answer, "usage": usage})


def test_a_hard_budget_reserves_cache_reads_dearer_than_input(tmp_path: Path) -> None:
    bound = reserved_input(BODY)
    at_input, at_cached = (bound * INPUT + OUTPUT) / 10**6, (bound * CACHED + OUTPUT) / 10**6
    limit = (at_input + at_cached) / 2  # room for the prompt at the input rate, not at the cache-read rate
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    _, key = make_key(tmp_path / "ledger.db", name="k")
    bodies: list[Any] = []
    with http_thread(recording_handler(bodies, _reads_the_prompt)) as upstream:
        config = {
            "storage": {"ledger": url, "flush_interval_ms": 50},
            "backends": {"router": {"kind": "openai", "base_url": upstream + "/v1", "provider": "openrouter"}},
            "models": {"d": {"backend": "router", "price_ref": "~deepseek/deepseek-pro-latest"}},
            "budgets": [{"name": "g", "scope": {"kind": "global"}, "usd": str(limit), "mode": "hard"}],
        }
        answer = chat_once(tmp_path, config, BODY, key)
    # before: 200, reserved at the input rate and charged the cache-read rate, past the hard budget
    assert answer.status_code == 429 and answer.json()["error"]["code"] == "budget_exceeded", answer.text
    assert f"may cost up to ${at_cached:.9f}" in answer.json()["error"]["message"]
    assert bodies == []
    assert sum(cost or 0 for (cost,) in ledger_columns(url, ledger.c.cost_nanousd)) == 0
