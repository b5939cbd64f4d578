"""A whole JSON answer with an `error` object beside its `choices` (OpenRouter's error mid-answer: the choice
finishes with `error`) is the upstream's failure, as the same event in a stream already was: a fallback where the
model has one, else a 502 `upstream_error`, the upstream's text in the log only. Before, it was a 200 answer of
whatever the choice held, its row `ok` and charged. `margin serve` over real HTTP, fake upstreams on threads, the
official openai SDK as the client."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from margin.ledger.models import ledger
from tests.helpers import ledger_columns, margin_serve
from tests.servers import http_thread, recording_handler, reply_json

SECRET = "quota of sk-upstream-SECRET exceeded"


def _failed(handler: BaseHTTPRequestHandler, body: Any) -> None:
    choice = {"index": 0, "message": {"role": "assistant", "content": "half an ans"}, "finish_reason": "error"}
    error = {"message": SECRET, "code": 502, "metadata": {"provider_name": "x"}}
    usage = {"prompt_tokens": 700, "completion_tokens": 40, "total_tokens": 740}  # what it billed
    answer = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice]}
    reply_json(handler, 200, {**answer, "error": error, "usage": usage})


def _good(handler: BaseHTTPRequestHandler, body: Any) -> None:
    choice = {"index": 0, "message": {"role": "assistant", "content": "a whole answer"}, "finish_reason": "stop"}
    answer = {"id": "y", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice]}
    reply_json(handler, 200, {**answer, "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})


def test_a_whole_answer_with_an_error_beside_its_choices_is_the_upstreams_failure(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with http_thread(recording_handler([], _failed)) as bad, http_thread(recording_handler([], _good)) as good:
        price = {"input": "1", "output": "1"}
        config = {
            "storage": {"ledger": url, "flush_interval_ms": 50},
            "backends": {
                "bad": {"kind": "openai", "base_url": bad + "/v1"},
                "good": {"kind": "openai", "base_url": good + "/v1"},
            },
            "models": {
                "alone": {"backend": "bad", "price": price},
                "helped": {"backend": "bad", "price": price, "fallbacks": ["good"]},
                "good": {"backend": "good", "price": price},
            },
        }
        path = tmp_path / "margin.yaml"
        path.write_text(yaml.safe_dump(config))
        log = tmp_path / "serve.log"
        with margin_serve(None, log, path) as (base, _):
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
            messages: Any = [{"role": "user", "content": "hello"}]
            with pytest.raises(openai.APIStatusError) as failed:
                client.chat.completions.create(model="alone", messages=messages, temperature=0)
            assert failed.value.status_code == 502  # before: a 200 answer, "half an ans"
            assert "upstream_error" in failed.value.response.text and "SECRET" not in failed.value.response.text
            answer = client.chat.completions.create(model="helped", messages=messages, temperature=0)
            assert answer.choices[0].message.content == "a whole answer"  # the fallback's
    rows = ledger_columns(url, ledger.c.status, ledger.c.http_status, ledger.c.error_code)
    # the fallback's row names the fault it fell back from
    assert rows == [("upstream_error", 502, "upstream_error"), ("fallback", 200, "upstream_error")]
    counted = ledger_columns(url, ledger.c.input_tokens, ledger.c.output_tokens, ledger.c.usage_source)
    # the failure's row: the usage its answer says it billed (before: the prompt estimated, 0 output); the
    # fallback's: the answer it gave
    assert counted == [(700, 40, "backend"), (5, 3, "backend")]
    costs = ledger_columns(url, ledger.c.cost_nanousd)
    # $1 per million tokens: what the budget is charged; the fallback's row adds what the failed attempt billed
    # (before: the fallback's 8 tokens alone, the 740 the first upstream billed in no row)
    assert costs == [((700 + 40) * 1000,), ((700 + 40 + 5 + 3) * 1000,)]
    assert "SECRET" in log.read_text()  # the upstream's text: in the log only
