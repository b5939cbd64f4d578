"""`POST /v1/responses/compact` end to end: a running `margin serve`, real HTTP, the official openai SDK's
`client.responses.compact` as the client. A model on an `openai` backend with `responses_compact` on is passed
through (the upstream's key, its model name, the body as validated) and metered like any call: admission and
budgets first, one ledger row (endpoint `responses.compact`) priced from the upstream's Responses usage. A model
whose backend cannot compact (a chat-only upstream, a local one) is a 400 naming `model`; a body margin does
not know is a 400 naming the field; neither reaches an upstream. Before: every call was a 405."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from margin import keys
from margin.guard.texts import request_texts
from margin.ledger import db as ledger_db
from margin.parsing import parse_request
from margin.protocol import CompactRequest, Endpoint
from tests.api.test_responses import PRICE, TIGHT_USD, _keys
from tests.helpers import margin_serve, wait_ledger_row
from tests.servers import http_thread, recording_handler, reply_json

KEY_ENV = "MARGIN_TEST_COMPACT_UPSTREAM_KEY"
UPSTREAM_KEY = "sk-upstream-compact"
USAGE = {
    "input_tokens": 120,
    "input_tokens_details": {"cached_tokens": 20},
    "output_tokens": 30,
    "output_tokens_details": {"reasoning_tokens": 10},
    "total_tokens": 150,
}
CONVERSATION: Any = [
    {"role": "user", "content": "Plan a trip to Paris"},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Here is a plan."}]},
    {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
    {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    {"type": "compaction", "id": "cmp_0", "encrypted_content": "gAAAA-earlier"},
]


@dataclass
class Sent:
    path: str
    authorization: str | None
    body: dict[str, Any]


@dataclass
class Live:
    url: str
    db: Path
    key: str
    private: str  # a key whose policy redacts PII
    sent: list[Sent] = field(default_factory=list)

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or self.key, max_retries=0)

    def post(self, body: dict[str, Any]) -> httpx.Response:
        auth = {"authorization": f"Bearer {self.key}"}
        return httpx.post(self.url + "/v1/responses/compact", json=body, headers=auth, timeout=30)

    def row(self, request_id: str) -> Any:
        return wait_ledger_row(self.db, self.url, request_id)


def _answer(sent: list[Sent]) -> Any:
    def answer(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        sent.append(Sent(handler.path, handler.headers.get("authorization"), body))
        if handler.path != "/v1/responses/compact":
            reply_json(handler, 404, {"error": {"message": "not here", "type": "invalid_request_error"}})
            return
        users = [{**item, "type": "message"} for item in body["input"] if item.get("role") == "user"]
        compaction = {"id": "cmp_1", "type": "compaction", "encrypted_content": "gAAAA-new", "created_by": "x"}
        reply_json(handler, 200, {
            "id": "resp_cmp_1", "object": "response.compaction", "created_at": 1, "output": [*users, compaction],
            "usage": USAGE,
        })  # fmt: skip

    return answer


@contextmanager
def compact_gateway(folder: Path) -> Iterator[Live]:
    key, _ = _keys(folder / "ledger.db")
    engine = ledger_db.make_sync_engine(f"sqlite:///{folder / 'ledger.db'}")
    _, private = keys.create_key(engine, keys.NewKey("private", "t", policy={"pii": "redact"}))
    engine.dispose()
    sent: list[Sent] = []
    with pytest.MonkeyPatch.context() as patch, http_thread(recording_handler([], _answer(sent))) as base:
        patch.setenv(KEY_ENV, UPSTREAM_KEY)
        upstream = {"kind": "openai", "base_url": f"{base}/v1", "api_key_env": KEY_ENV, "retries": {"attempts": 0}}
        openai_model = {"backend": "up", "upstream_model": "gpt-5.4-mini", "price": PRICE}
        config = {
            "storage": {"flush_interval_ms": 10},
            "backends": {
                "up": {**upstream, "responses_compact": True},
                "chat-only": upstream,  # the same upstream, not told it compacts
                "fake": {"kind": "fake", "output_tokens": 5},
            },
            "models": {
                "gpt": openai_model,
                "tight": openai_model,
                "roomy": openai_model,
                "chat-up": {**openai_model, "backend": "chat-only"},
                "local": {"backend": "fake", "price": PRICE},
            },
            "budgets": [
                {"name": "tight", "scope": {"kind": "model", "value": "tight"}, "usd": TIGHT_USD},
                {"name": "roomy", "scope": {"kind": "model", "value": "roomy"}, "usd": "10"},
            ],
        }
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        serving = margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with serving as (url, _process):
            yield Live(url, folder / "ledger.db", key, private, sent)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with compact_gateway(tmp_path_factory.mktemp("compact")) as gateway:
        yield gateway


def test_the_sdk_s_compact_is_passed_through_and_metered_from_the_upstream_s_usage(live: Live) -> None:
    before = len(live.sent)
    with live.client() as client:
        raw = client.responses.with_raw_response.compact(
            model="gpt", input=CONVERSATION, instructions="be brief", prompt_cache_key="k1"
        )
    compacted = raw.parse()
    assert compacted.object == "response.compaction" and compacted.id == "resp_cmp_1"
    assert [item.type for item in compacted.output] == ["message", "compaction"]
    assert compacted.output[-1].encrypted_content == "gAAAA-new"  # type: ignore[union-attr]
    assert (compacted.usage.input_tokens, compacted.usage.output_tokens) == (120, 30)
    [sent] = live.sent[before:]
    assert (sent.path, sent.authorization) == ("/v1/responses/compact", f"Bearer {UPSTREAM_KEY}")
    assert sent.body == {"model": "gpt-5.4-mini", "input": CONVERSATION, "instructions": "be brief",
                         "prompt_cache_key": "k1"}  # fmt: skip
    row = live.row(raw.headers["x-request-id"])
    assert (row.endpoint, row.model, row.http_status) == ("responses.compact", "gpt", 200)
    assert (row.input_tokens, row.output_tokens, row.cached_tokens) == (120, 30, 20)
    # $1 / $2 per million; the 20 cached tokens have no price of their own: input's
    assert row.cost_nanousd == 120 * 1000 + 30 * 2000
    assert Decimal(raw.headers["x-margin-cost-usd"]) == Decimal("0.00018")


@pytest.mark.parametrize("model", ["local", "chat-up"])
def test_a_model_whose_backend_cannot_compact_is_a_400_naming_model(live: Live, model: str) -> None:
    before = len(live.sent)
    with live.client() as client, pytest.raises(openai.BadRequestError) as refused:
        client.responses.compact(model=model, input="hello")
    error = refused.value.body
    assert isinstance(error, dict) and error["param"] == "model" and error["code"] == "unsupported_value"
    assert "/v1/responses/compact" in error["message"] and "responses_compact" in error["message"]
    assert len(live.sent) == before
    row = live.row(refused.value.response.headers["x-request-id"])
    assert (row.endpoint, row.http_status, row.cost_nanousd) == ("responses.compact", 400, 0)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt", "input": "x", "max_output_tokens": 5}, "max_output_tokens"),  # not compact's: unknown
        ({"model": "gpt", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"model": "gpt", "input": [{"type": "Not A Type"}]}, "input.0.type"),
        ({"model": "gpt", "input": [7]}, "input.0"),
        ({"model": "gpt", "input": [{"role": "user", "content": "x"}] * 10_001}, "input"),
        ({"model": "gpt", "prompt_cache_options": {"mode": "explicit", "bogus": 1}}, "prompt_cache_options.bogus"),
        ({"model": "gpt", "service_tier": "scale"}, "service_tier"),
        ({"input": "x"}, "model"),
    ],
)
def test_a_body_margin_does_not_know_is_a_400_naming_the_field(live: Live, body: Any, param: str) -> None:
    before = len(live.sent)
    refused = live.post(body)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == param
    assert len(live.sent) == before


def test_a_budget_refuses_before_anything_is_sent(live: Live) -> None:
    before = len(live.sent)
    refused = live.post({"model": "tight", "input": "hi"})
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert len(live.sent) == before
    row = live.row(refused.headers["x-request-id"])
    assert (row.endpoint, row.http_status) == ("responses.compact", 429)
    # within a budget: reserved, sent, and settled at the upstream's usage (the input bound is the body's size)
    admitted = live.post({"model": "roomy", "input": CONVERSATION})
    assert admitted.status_code == 200, admitted.text
    row = live.row(admitted.headers["x-request-id"])
    assert (row.http_status, row.input_tokens, row.output_tokens, row.cost_nanousd) == (200, 120, 30, 180_000)


def test_a_policy_that_redacts_redacts_the_items_text_and_leaves_their_structure(live: Live) -> None:
    before = len(live.sent)
    leaky: Any = [{"role": "user", "content": "mail jane.doe@example.org"}, CONVERSATION[2], CONVERSATION[4]]
    with live.client(live.private) as client:
        compacted = client.responses.compact(model="gpt", input=leaky)
    assert compacted.usage.input_tokens == 120
    [sent] = live.sent[before:]
    assert sent.body["input"] == [{"role": "user", "content": "mail <EMAIL_1>"}, CONVERSATION[2], CONVERSATION[4]]


def test_the_guard_reads_a_compaction_s_items_and_admission_estimates_their_text() -> None:
    raw = {"model": "gpt", "instructions": "be brief", "input": CONVERSATION}
    texts = [text for _where, text in request_texts(raw)]
    assert {"be brief", "Plan a trip to Paris", "Here is a plan.", '{"city":"Paris"}', "sunny"} <= set(texts)
    assert "gAAAA-earlier" not in texts and "c1" not in texts  # opaque blobs and ids are not text
    body = parse_request(Endpoint.COMPACT, raw)
    assert isinstance(body, CompactRequest) and "gAAAA" not in body.prompt and "sunny" in body.prompt
