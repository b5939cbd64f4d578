"""A hard budget reserves what an `openai` backend's prompt-cache writes may cost. An OpenAI-compatible upstream
may report `prompt_tokens_details.cache_write_tokens` (another margin in front of Anthropic does; `Usage.from_openai`
reads them), priced at the model's `cache_write_input` rate. The reservation priced the prompt at the input rate
(only an `anthropic` backend's was priced at the dearer of the two), so a request reserved $0.53 was charged
$1.00 and spent a $0.60 hard budget past its limit. `margin serve` over real HTTP, a fake upstream on a thread."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from margin.ledger.models import ledger
from tests.governance.conftest import make_key
from tests.helpers import chat_once, ledger_columns, reserved_input
from tests.servers import http_thread, recording_handler, reply_json

PROMPT_TOKENS = 1000  # all of them written to the upstream's prompt cache
PRICE = {"input": "500", "output": "0", "cache_write_input": "1000", "version": "t"}  # writes: 2× input ($1.00)
BODY = {"model": "w", "messages": [{"role": "user", "content": "x" * PROMPT_TOKENS}], "max_tokens": 1}


def _writes_the_prompt(handler: BaseHTTPRequestHandler, body: Any) -> None:
    details = {"cached_tokens": 0, "cache_write_tokens": PROMPT_TOKENS}
    usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 1, "total_tokens": PROMPT_TOKENS + 1,
             "prompt_tokens_details": details}  # fmt: skip
    choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    answer = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice]}
    reply_json(handler, 200, {**answer, "usage": usage})


def test_a_hard_budget_reserves_the_cache_write_rate_an_openai_upstream_may_bill(tmp_path: Path) -> None:
    assert reserved_input(BODY) > PROMPT_TOKENS  # within what the request may be billed for: not held
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    _, key = make_key(tmp_path / "ledger.db", name="k")
    bodies: list[Any] = []
    with http_thread(recording_handler(bodies, _writes_the_prompt)) as upstream:
        config = {
            "storage": {"ledger": url, "flush_interval_ms": 50},
            "backends": {"proxy": {"kind": "openai", "base_url": upstream + "/v1"}},
            "models": {"w": {"backend": "proxy", "price": PRICE}},
            "budgets": [{"name": "g", "scope": {"kind": "global"}, "usd": "0.60", "period": "month", "mode": "hard"}],
        }
        answer = chat_once(tmp_path, config, BODY, key)
    # before: 200, reserved $0.53 at the input rate and charged $1.00 against the $0.60 hard budget
    assert answer.status_code == 429 and answer.json()["error"]["code"] == "budget_exceeded", answer.text
    assert bodies == []
    assert sum(cost or 0 for (cost,) in ledger_columns(url, ledger.c.cost_nanousd)) == 0
