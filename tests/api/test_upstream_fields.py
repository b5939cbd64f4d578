"""OpenAI chat fields margin once accepted and dropped without a word (`prediction`, `verbosity`,
`prompt_cache_key`, `prompt_cache_retention`, `prompt_cache_options`, `safety_identifier`, `moderation`), end to
end against a running `margin serve` and an OpenAI-like upstream that records what it receives, with the official
SDK as the client. The hints reach an `openai` upstream as sent; `verbosity` other than `medium` needs one (400
elsewhere, as a tier a backend does not allow); a `prediction` reaches it and its budget reservation covers
the prediction's rejected tokens, which OpenAI bills as completion tokens; `moderation` is refused. Whatever
is refused is refused before anything is sent or reserved."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import yaml

from tests.helpers import margin_serve, wait_ledger_row
from tests.servers import http_thread, recording_handler, reply_json

USER: Any = [{"role": "user", "content": "hi there"}]
GENERATED = 5  # completion tokens the upstream generates; a prediction's rejected tokens come on top
PRICE = {"input": "0", "output": "1"}  # $1 per million output tokens: 1,000 nano-USD a token; input is free
NANO_PER_TOKEN = 1000
# a hard budget of 2,000 output tokens: 1,000 and a prediction of 1,500 tokens do not fit, 1,000 alone does
TIGHT_USD = "0.002"
HINTS: Any = {
    "prompt_cache_key": "tenant-42:support-bot",
    "safety_identifier": "c2f1e0b8a7d6",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "explicit", "ttl": "30m"},
}


def _rejected(body: dict[str, Any]) -> int:
    """The prediction's tokens this upstream rejects: all of them, one a character (the tests' texts are ASCII)."""
    prediction = body.get("prediction")
    if not prediction:
        return 0
    content = prediction["content"]
    return len(content) if isinstance(content, str) else sum(len(part["text"]) for part in content)


def _answer(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    if body.get("model") == "broken":
        reply_json(handler, 502, {"error": {"message": "down", "type": "server_error"}})
        return
    rejected = _rejected(body)
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": GENERATED + rejected,  # OpenAI bills rejected prediction tokens as output
        "total_tokens": 10 + GENERATED + rejected,
        "completion_tokens_details": {"accepted_prediction_tokens": 0, "rejected_prediction_tokens": rejected},
    }
    choice = {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    answer = {"id": "chatcmpl-f", "object": "chat.completion", "created": 1, "model": body["model"],
              "choices": [choice], "usage": usage}  # fmt: skip
    reply_json(handler, 200, answer)


@dataclass
class Live:
    url: str
    db: Path
    client: openai.OpenAI
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def row(self, request_id: str) -> Any:
        return wait_ledger_row(self.db, self.url, request_id)

    def create(self, model: str, **fields: Any) -> Any:
        """The SDK's raw response (headers, then `.parse()`) to a chat of `model` with `fields`."""
        return self.client.chat.completions.with_raw_response.create(model=model, messages=USER, **fields)

    def refused(self, model: str, **fields: Any) -> openai.BadRequestError:
        with pytest.raises(openai.BadRequestError) as caught:
            self.client.chat.completions.create(model=model, messages=USER, **fields)
        return caught.value


def _budget(name: str, model: str, usd: str) -> dict[str, Any]:
    return {"name": name, "scope": {"kind": "model", "value": model}, "usd": usd}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("fields")
    bodies: list[dict[str, Any]] = []
    with http_thread(recording_handler(bodies, _answer)) as base:
        upstream = {"kind": "openai", "base_url": f"{base}/v1", "timeout_s": 10, "retries": {"attempts": 0}}
        openai_model = {"backend": "up", "upstream_model": "gpt-4.1-mini", "price": PRICE}
        fake_model = {"backend": "fake", "price": PRICE}
        config = {
            "storage": {"flush_interval_ms": 10},
            "backends": {"up": upstream, "fake": {"kind": "fake", "output_tokens": GENERATED}},
            "models": {
                "plain": openai_model,
                "fake-chat": fake_model,
                "broken": {"backend": "up", "upstream_model": "broken", "price": PRICE, "fallbacks": ["fake-chat"]},
                "tight": openai_model,
                "roomy": openai_model,
                "fake-tight": fake_model,
            },
            "budgets": [
                _budget("tight", "tight", TIGHT_USD),
                _budget("roomy", "roomy", "10"),
                _budget("fake-tight", "fake-tight", TIGHT_USD),
            ],
        }
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        serving = margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with serving as (url, _process), openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0) as client:
            yield Live(url, folder / "ledger.db", client, bodies)


def test_hints_reach_an_openai_upstream_as_sent(live: Live) -> None:
    """The prompt-cache and safety hints buy no work: forwarded as sent (before: dropped, so the upstream's
    prompt cache was never keyed and its abuse detection never saw the end user)."""
    raw = live.create("plain", verbosity="low", **HINTS)
    assert raw.parse().choices[0].message.content == "hello"
    sent = live.bodies[-1]
    assert {name: sent.get(name) for name in HINTS} == HINTS
    assert sent["verbosity"] == "low"
    row = live.row(raw.headers["x-request-id"])
    assert (row.http_status, row.output_tokens, row.cost_nanousd) == (200, GENERATED, GENERATED * NANO_PER_TOKEN)


def test_a_backend_that_is_not_openai_is_sent_no_hints(live: Live) -> None:
    """The fake (as the local model) has no prompt cache or abuse detection: the hints change nothing there."""
    sent = len(live.bodies)
    answer = live.create("fake-chat", verbosity="medium", **HINTS).parse()
    assert answer.choices[0].message.content
    assert len(live.bodies) == sent


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt_cache_key": "k" * 65}, "prompt_cache_key"),  # OpenAI's limit: 64 characters
        ({"prompt_cache_key": 42}, "prompt_cache_key"),
        ({"safety_identifier": "s" * 129}, "safety_identifier"),  # the SDK's: 128
        ({"safety_identifier": ["a"]}, "safety_identifier"),
        ({"prompt_cache_retention": "1h"}, "prompt_cache_retention"),
        ({"prompt_cache_options": {"ttl": "12h"}}, "prompt_cache_options"),
        ({"prompt_cache_options": {"mode": "explicit", "budget": 1}}, "prompt_cache_options"),  # no unknown option
        ({"prompt_cache_options": "explicit"}, "prompt_cache_options"),
        ({"verbosity": "terse"}, "verbosity"),
        ({"verbosity": "LOW"}, "verbosity"),
        ({"prediction": {"type": "content"}}, "prediction"),
        ({"prediction": {"type": "file", "content": "x"}}, "prediction"),
        ({"prediction": {"type": "content", "content": [{"type": "image_url", "text": "x"}]}}, "prediction"),
        ({"prediction": {"type": "content", "content": 7}}, "prediction"),
        ({"prediction": "x = 1"}, "prediction"),
    ],
)
def test_bad_values_are_a_400_naming_the_field_and_nothing_is_sent(
    live: Live, fields: dict[str, Any], param: str
) -> None:
    sent = len(live.bodies)
    answer = httpx.post(live.url + "/v1/chat/completions", json={"model": "plain", "messages": USER, **fields})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"].split(".")[0] == param and error["type"] == "invalid_request_error"
    assert len(live.bodies) == sent


def test_verbosity_other_than_medium_needs_an_openai_backend(live: Live) -> None:
    """The fake (as the local model) cannot make its answer terser or longer: `low` and `high` there are a 400
    `unsupported_value` before anything is reserved or sent, as a tier its backend does not allow (and as
    OpenAI answers a model without the knob). `medium`, what every model does, is served."""
    for verbosity in ("low", "high"):
        error = live.refused("fake-chat", verbosity=verbosity)
        assert (error.param, error.code) == ("verbosity", "unsupported_value")
        row = live.row(error.response.headers["x-margin-request-id"])
        assert (row.http_status, row.cost_nanousd) == (400, 0)
    assert live.create("fake-chat", verbosity="medium").parse().choices[0].message.content


def test_a_fallback_never_answers_at_a_verbosity_it_cannot_honour(live: Live) -> None:
    """A fallback whose backend cannot honour the verbosity is dropped: the request fails rather than being
    answered by the fake as if it had not asked. Without one, the fallback serves it."""
    sent = len(live.bodies)
    with pytest.raises(openai.InternalServerError):
        live.client.chat.completions.create(model="broken", messages=USER, verbosity="high")
    assert [body["model"] for body in live.bodies[sent:]] == ["broken"]
    assert live.bodies[-1]["verbosity"] == "high"
    assert live.create("broken").parse().choices[0].message.content  # the fake fallback


@pytest.mark.parametrize("model", ["plain", "fake-chat"])
def test_moderation_is_refused_before_anything_is_sent(live: Live, model: str) -> None:
    """OpenAI's moderated completions (`block` stops the answer) cannot be honoured: margin's cache, guard and
    meter do not read its results, and no other backend runs it. Before: dropped, the caller's answer went
    unmoderated without a word."""
    sent = len(live.bodies)
    moderation: Any = {"model": "omni-moderation-latest", "policy": {"output": {"mode": "block"}}}
    error = live.refused(model, moderation=moderation)
    assert (error.status_code, error.param, error.code) == (400, "moderation", "unsupported_parameter")
    assert len(live.bodies) == sent
    assert live.create(model, moderation=None).parse().choices  # null: left out, as OpenAI reads it


CODE = "def total(xs):\n    return sum(xs)\n"


@pytest.mark.parametrize("content", [CODE, [{"type": "text", "text": "def total(xs):"}, {"type": "text", "text": "x"}]])
def test_a_prediction_reaches_the_upstream_and_its_rejected_tokens_are_charged(live: Live, content: Any) -> None:
    """The prediction goes as sent, and the row is what the upstream bills: the rejected prediction tokens are
    completion tokens (OpenAI's `rejected_prediction_tokens`), believed up to the prediction's bound rather than
    held at `max_tokens`, since the reservation covered them."""
    prediction: Any = {"type": "content", "content": content}
    raw = live.create("roomy", prediction=prediction, max_tokens=10)  # fewer than it bills
    usage = raw.parse().usage
    assert live.bodies[-1]["prediction"] == prediction
    rejected = _rejected(live.bodies[-1])
    assert usage.completion_tokens == GENERATED + rejected
    row = live.row(raw.headers["x-request-id"])
    assert (row.output_tokens, row.usage_source) == (GENERATED + rejected, "backend")
    assert row.cost_nanousd == (GENERATED + rejected) * NANO_PER_TOKEN


def test_the_budget_reservation_covers_the_prediction(live: Live) -> None:
    """A hard budget of 2,000 output tokens. 1,000 output tokens and a prediction of 1,500 rejected tokens
    would bill 2,500: without the prediction in the reservation it was admitted at 1,000 and overspent the
    budget by a quarter. It is refused before anything is sent; the same request without the prediction, and
    one with a prediction that fits, are served."""
    sent = len(live.bodies)
    big: Any = {"type": "content", "content": "x" * 1500}
    refused = httpx.post(
        live.url + "/v1/chat/completions",
        json={"model": "tight", "messages": USER, "max_tokens": 1000, "prediction": big},
    )
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert len(live.bodies) == sent
    live.create("tight", max_tokens=1000)
    small: Any = {"type": "content", "content": "x" * 500}  # 1,000 + its bound fit what is left
    raw = live.create("tight", max_tokens=1000, prediction=small)
    row = live.row(raw.headers["x-request-id"])
    assert (row.output_tokens, row.cost_nanousd) == (GENERATED + 500, (GENERATED + 500) * NANO_PER_TOKEN)


def test_a_backend_that_is_not_openai_ignores_the_prediction_and_reserves_nothing_for_it(live: Live) -> None:
    """The answer is the same without a prediction (OpenAI's words), so the fake (as the local model) ignores
    it: served, billed what it generated, and its budget reserves no prediction tokens it cannot bill."""
    big: Any = {"type": "content", "content": "x" * 1500}
    raw = live.create("fake-tight", max_tokens=1000, prediction=big)
    assert raw.parse().choices[0].message.content
    assert live.row(raw.headers["x-request-id"]).output_tokens == GENERATED


def test_a_prediction_is_not_part_of_the_cache_key(live: Live) -> None:
    """The answer is the same with any prediction, and the hints change nothing in it: a deterministic request
    is answered from the cache whatever prediction or hints it carries."""
    fields: Any = {"temperature": 0, "max_tokens": 50}
    first = live.create("roomy", prediction={"type": "content", "content": "one"}, **fields)
    assert first.headers["x-margin-cache"] == "miss"
    sent = len(live.bodies)
    hit = live.create("roomy", prediction={"type": "content", "content": "two"}, **HINTS, **fields)
    assert hit.headers["x-margin-cache"] == "hit-exact"
    assert len(live.bodies) == sent
    assert orjson.loads(hit.content)["choices"][0]["message"]["content"] == "hello"
