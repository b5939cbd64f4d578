"""What an attempt that did no work costs, against a running `margin serve` and a recording upstream: nothing when
the request never reached a model (the upstream refused margin's own key, Anthropic's 529), and a fallback that
is refused after an earlier attempt was sent keeps that attempt's charge (the upstream may have done, and billed,
the work). Before: a 401 charged the tenant the estimated prompt for the operator's key; and a 500 followed by a
fallback's 400 left a row of $0 for a prompt the first upstream received."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.helpers import margin_serve, wait_ledger_row
from tests.servers import http_thread, recording_handler, reply_json

PRICE = {"input": "1", "output": "2"}
PROMPT = [{"role": "user", "content": "tell me about the weather " * 40}]
STATUSES = {"five": 500, "nokey": 401, "overloaded": 529, "rejects": 400}


def _answer(handler: Any, body: Any) -> None:
    status = STATUSES[body.get("model")]
    kind = "overloaded_error" if status == 529 else "invalid_request_error"
    reply_json(handler, status, {"error": {"message": "no (internal-host-7)", "type": kind, "code": "nope"}})


@dataclass
class Live:
    url: str
    db: Path
    bodies: list[Any]
    client: openai.OpenAI

    def row(self, model: str) -> Any:
        with pytest.raises(openai.APIStatusError) as caught:
            self.client.chat.completions.with_raw_response.create(model=model, messages=PROMPT)  # type: ignore[arg-type]
        return wait_ledger_row(self.db, self.url, caught.value.response.headers["x-request-id"])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("refused")
    bodies: list[Any] = []
    with http_thread(recording_handler(bodies, _answer)) as base:
        backend = {"kind": "openai", "base_url": base + "/v1", "retries": {"attempts": 0}}
        models: dict[str, Any] = {
            name: {"backend": "up", "upstream_model": name, "price": PRICE} for name in ("five", "nokey", "overloaded")
        }
        models["first"] = {"backend": "up", "upstream_model": "five", "price": PRICE, "fallbacks": ["second"]}
        models["second"] = {"backend": "other", "upstream_model": "rejects", "price": PRICE}
        config = {"storage": {"flush_interval_ms": 10}, "backends": {"up": backend, "other": backend}, "models": models}
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        serving = margin_serve(folder / "l.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with serving as (url, _), openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0) as client:
            yield Live(url, folder / "l.db", bodies, client)


@pytest.mark.parametrize("model", ["nokey", "overloaded"])
def test_an_attempt_that_reached_no_model_costs_nothing(live: Live, model: str) -> None:
    row = live.row(model)
    assert live.bodies[-1]["model"] == model and row.http_status == 502
    assert (row.usage_source, row.input_tokens, row.cost_nanousd) == ("refused", 0, 0)


def test_a_refused_fallback_keeps_the_charge_of_the_attempt_sent_before_it(live: Live) -> None:
    alone = live.row("five")  # a 500: the upstream had the prompt, which is charged (estimated)
    assert alone.usage_source == "estimated" and alone.input_tokens > 200 and alone.cost_nanousd > 0
    row = live.row("first")  # the same 500, then the fallback's 400 (which alone would cost nothing)
    assert [body["model"] for body in live.bodies[-2:]] == ["five", "rejects"] and row.http_status == 400
    assert (row.usage_source, row.input_tokens, row.cost_nanousd) == (
        "estimated",
        alone.input_tokens,
        alone.cost_nanousd,
    )
