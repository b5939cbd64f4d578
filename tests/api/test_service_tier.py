"""`service_tier` end to end against a running `margin serve` and an OpenAI-like upstream over real HTTP: the
field reaches an upstream that allows the tier, the row records the tier the upstream said served it and costs
what that tier costs (gpt-5-mini in genai-prices: $0.25 / $2 per million tokens standard, $0.125 / $1 flex,
$0.45 / $3.60 priority), a tier the backend does not allow is a 400 before anything is sent, and the budget
reservation is the dearest tier the request may be served at. Before, the field was dropped: every request was
served and charged at the upstream's default tier, whatever it asked for."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import margin_serve, wait_ledger_row
from tests.servers import http_thread, recording_handler, reply_events, reply_json

USER = [{"role": "user", "content": "hi there"}]
USAGE = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
# 1,000 input and 500 output tokens of gpt-5-mini, in nano-USD
NANO = {"default": 1_250_000, "flex": 625_000, "priority": 2_250_000}


@dataclass
class Upstream:
    """Answers like OpenAI: the tier it served in the answer and in every stream event (the tier asked for,
    `default` when none or `auto`), except upstream model `quiet` (says none) and `standard` (always `default`)."""

    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)


def _served(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("model") == "quiet":
        return {}
    if body.get("model") in ("on_demand", "priority", "scale"):  # a provider's own tier; a project's default tier
        return {"service_tier": body["model"]}
    asked = body.get("service_tier")
    if body.get("model") == "standard" or asked in (None, "auto"):
        return {"service_tier": "default"}
    return {"service_tier": asked}


def _events(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    base = {"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
    base |= _served(body)
    yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    yield {**base, "choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": None}]}
    yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    yield {**base, "choices": [], "usage": USAGE}


def _answer(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    if body.get("model") == "broken":
        reply_json(handler, 502, {"error": {"message": "down", "type": "server_error"}})
        return
    if body.get("stream"):
        reply_events(handler, _events(body))
        return
    choice = {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    answer = {"id": "chatcmpl-t", "object": "chat.completion", "created": 1, "model": body["model"],
              "choices": [choice], "usage": USAGE}  # fmt: skip
    reply_json(handler, 200, {**answer, **_served(body)})


@dataclass
class Live:
    url: str
    db: Path
    upstream: Upstream

    def chat(self, model: str, **fields: Any) -> httpx.Response:
        return httpx.post(self.url + "/v1/chat/completions", json={"model": model, "messages": USER, **fields})

    def row(self, request_id: str) -> Any:
        return wait_ledger_row(self.db, self.url, request_id)


def _tiered(upstream: str) -> dict[str, Any]:
    return {"backend": "tiers", "upstream_model": upstream, "price_ref": "gpt-5-mini"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("tiers")
    upstream = Upstream()
    with http_thread(recording_handler(upstream.bodies, _answer)) as base:
        upstream.url = f"{base}/v1"
        common = {"base_url": upstream.url, "provider": "openai", "timeout_s": 10, "retries": {"attempts": 0}}
        config = {
            "storage": {"flush_interval_ms": 10},
            "backends": {
                "tiers": {"kind": "openai", **common, "service_tiers": ["flex", "priority"]},
                "plain": {"kind": "openai", **common},
                "fake": {"kind": "fake", "output_tokens": 5},
            },
            "models": {
                "mini": _tiered("gpt-5-mini"),
                "quiet": _tiered("quiet"),
                "standard": _tiered("standard"),
                "budgeted": _tiered("gpt-5-mini"),
                "broken": {**_tiered("broken"), "fallbacks": ["plain"]},
                "plain-first": {"backend": "plain", "upstream_model": "gpt-5-mini", "fallbacks": ["mini"]},
                "plain": {"backend": "plain", "upstream_model": "gpt-5-mini", "price_ref": "gpt-5-mini"},
                "provider-tier": {"backend": "plain", "upstream_model": "on_demand", "price_ref": "gpt-5-mini"},
                "project-priority": {"backend": "plain", "upstream_model": "priority", "price_ref": "gpt-5-mini"},
                "fake-chat": {"backend": "fake", "price": {"input": "1", "output": "1"}},
                "scaled": _tiered("scale"),  # an upstream that answers at a tier margin has no price for
            },
            # 500 input tokens at most (counted) and 1,000 output: flex ≤ $0.0011, priority ≥ $0.0036
            "budgets": [
                {"name": "tight", "scope": {"kind": "model", "value": "budgeted"}, "usd": "0.003"},
                {"name": "scaled", "scope": {"kind": "model", "value": "scaled"}, "usd": "1"},
            ],
        }
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        serving = margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with serving as (url, _process):
            yield Live(url, folder / "ledger.db", upstream)


@pytest.mark.parametrize("tier", ["flex", "priority"])
def test_the_tier_reaches_the_upstream_and_the_row_costs_what_it_served(live: Live, tier: str) -> None:
    answer = live.chat("mini", service_tier=tier)
    assert answer.status_code == 200, answer.text
    assert live.upstream.bodies[-1]["service_tier"] == tier
    assert answer.json()["service_tier"] == tier  # the upstream's answer, forwarded as it came
    row = live.row(answer.headers["x-margin-request-id"])
    assert (row.service_tier, row.cost_nanousd, row.cost_status) == (tier, NANO[tier], "priced")
    assert answer.headers["x-margin-cost-usd"] == f"0.{NANO[tier]:09d}"


def test_the_row_is_charged_at_the_tier_the_upstream_says_served_it(live: Live) -> None:
    """Asked for priority, served at the standard tier (the upstream says so): charged the standard price.
    An upstream that says nothing is charged at the tier asked for."""
    downgraded = live.chat("standard", service_tier="priority")
    assert downgraded.status_code == 200, downgraded.text
    row = live.row(downgraded.headers["x-margin-request-id"])
    assert (row.service_tier, row.cost_nanousd) == ("default", NANO["default"])
    quiet = live.chat("quiet", service_tier="flex")
    row = live.row(quiet.headers["x-margin-request-id"])
    assert (row.service_tier, row.cost_nanousd) == ("flex", NANO["flex"])


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_stream_is_charged_at_the_tier_its_events_name(live: Live, include_usage: bool) -> None:
    body = {"model": "mini", "messages": USER, "stream": True, "service_tier": "flex"}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body) as stream:
        assert stream.status_code == 200
        events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
        request_id = stream.headers["x-margin-request-id"]
    assert events[-1] == "[DONE]"
    assert all(json.loads(event)["service_tier"] == "flex" for event in events[:-1])
    assert live.upstream.bodies[-1]["service_tier"] == "flex"
    row = live.row(request_id)
    assert (row.service_tier, row.cost_nanousd, row.stream) == ("flex", NANO["flex"], True)


@pytest.mark.parametrize("model", ["plain", "fake-chat"])
@pytest.mark.parametrize("tier", ["flex", "priority"])
def test_a_tier_the_backend_does_not_allow_is_refused_before_anything_is_sent(
    live: Live, model: str, tier: str
) -> None:
    sent = len(live.upstream.bodies)
    answer = live.chat(model, service_tier=tier)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["param"], error["code"]) == ("service_tier", "unsupported_value")
    assert error["type"] == "invalid_request_error"
    assert len(live.upstream.bodies) == sent
    row = live.row(answer.headers["x-margin-request-id"])
    assert (row.http_status, row.cost_nanousd, row.service_tier) == (400, 0, None)


def test_a_fallback_is_never_another_tier(live: Live) -> None:
    """A fallback whose backend does not allow the tier is dropped (the request fails rather than being
    served, and charged, at the standard tier); a model whose own backend does not allow it is refused even
    when a fallback would."""
    sent = len(live.upstream.bodies)
    failed = live.chat("broken", service_tier="flex")
    assert failed.status_code == 502, failed.text
    assert [body["model"] for body in live.upstream.bodies[sent:]] == ["broken"]
    assert live.chat("broken").status_code == 200  # without a tier, the fallback serves it
    refused = live.chat("plain-first", service_tier="flex")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "service_tier"


def test_auto_and_default_need_no_tier_and_reach_only_a_backend_that_knows_tiers(live: Live) -> None:
    for tier in ("auto", "default"):
        assert live.chat("mini", service_tier=tier).status_code == 200
        assert live.upstream.bodies[-1]["service_tier"] == tier
        answer = live.chat("plain", service_tier=tier)
        assert answer.status_code == 200
        assert "service_tier" not in live.upstream.bodies[-1]  # a backend without tiers is sent none
        row = live.row(answer.headers["x-margin-request-id"])
        assert (row.service_tier, row.cost_nanousd) == ("default", NANO["default"])  # the upstream said so
        local = live.chat("fake-chat", service_tier=tier)
        assert local.status_code == 200
        assert live.row(local.headers["x-margin-request-id"]).service_tier == tier  # what it asked for
    assert live.row(live.chat("fake-chat").headers["x-margin-request-id"]).service_tier is None


def test_a_cache_hit_records_no_tier_it_did_not_pay_for(live: Live) -> None:
    """The tier is not in the exact cache's key (the same answer at any tier): a hit is replayed at no cost, and
    its row names no tier (it was served by no tier's capacity, and charged none)."""
    deterministic = {"temperature": 0, "messages": [{"role": "user", "content": "cache me"}]}
    first = live.chat("mini", service_tier="flex", **deterministic)
    assert first.status_code == 200 and first.headers["x-margin-cache"] == "miss"
    assert live.row(first.headers["x-margin-request-id"]).service_tier == "flex"
    sent = len(live.upstream.bodies)
    for tier in ("priority", "flex"):
        hit = live.chat("mini", service_tier=tier, **deterministic)
        assert hit.status_code == 200 and hit.headers["x-margin-cache"] == "hit-exact"
        row = live.row(hit.headers["x-margin-request-id"])
        assert (row.kind, row.service_tier, row.cost_nanousd, row.saved_nanousd) == ("cache_hit", None, 0, NANO["flex"])
    assert len(live.upstream.bodies) == sent


@pytest.mark.parametrize("bad", ["turbo", "scale", "FLEX", 3])
def test_an_unknown_tier_is_a_400_naming_the_field(live: Live, bad: Any) -> None:
    sent = len(live.upstream.bodies)
    answer = live.chat("mini", service_tier=bad)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "service_tier"
    assert len(live.upstream.bodies) == sent


def test_the_completions_endpoint_takes_no_priced_tier(live: Live) -> None:
    answer = httpx.post(live.url + "/v1/completions", json={"model": "mini", "prompt": "hi", "service_tier": "flex"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "service_tier"


def test_the_reservation_is_the_dearest_tier_the_request_may_be_served_at(live: Live) -> None:
    """A hard budget of $0.003: 1,000 output tokens at flex fit, at priority they do not; a request that
    leaves the tier to the upstream may be served at priority (the project's default may be it)."""
    sent = len(live.upstream.bodies)
    for tier in ("priority", "auto", None):
        fields = {"max_tokens": 1000} | ({"service_tier": tier} if tier else {})
        refused = live.chat("budgeted", **fields)
        assert refused.status_code == 429, (tier, refused.text)
        assert refused.json()["error"]["code"] == "budget_exceeded"
    assert len(live.upstream.bodies) == sent
    served = live.chat("budgeted", max_tokens=1000, service_tier="flex")
    assert served.status_code == 200, served.text
    row = live.row(served.headers["x-margin-request-id"])
    # the upstream's 1,000 input tokens are held to the most the reservation priced (margin.pipeline.ceiling)
    assert row.service_tier == "flex" and row.input_tokens < 1000 and row.output_tokens == 500
    assert row.cost_nanousd == row.input_tokens * 125 + row.output_tokens * 1000  # $0.125 / $1 per million


def test_a_backend_without_tiers_prices_a_tier_name_it_does_not_know_at_the_standard_rate(live: Live) -> None:
    """A provider that names its own tier in every answer (Groq's `on_demand`) through a backend that lists no
    tiers: the row records the name and is priced at the standard rate, as before tiers were read (an unknown
    name there made every answer's cost unknown). One whose answer names priority (an OpenAI project whose
    default tier is priority) is priced at priority: what the upstream charges."""
    answer = live.chat("provider-tier")
    assert answer.status_code == 200, answer.text
    row = live.row(answer.headers["x-margin-request-id"])
    assert (row.service_tier, row.cost_nanousd, row.cost_status) == ("on_demand", NANO["default"], "priced")
    dearer = live.chat("project-priority")
    row = live.row(dearer.headers["x-margin-request-id"])
    assert (row.service_tier, row.cost_nanousd) == ("priority", NANO["priority"])


def _spent(live: Live, budget: str) -> str:
    listing = httpx.get(live.url + "/admin/budgets").json()["data"]
    return str(next(entry for entry in listing if entry["name"] == budget)["spent"])


def test_an_answer_at_a_tier_without_a_price_is_held_at_its_reservation_not_free(live: Live) -> None:
    """An upstream answering at a tier margin has no price for (`scale`): the row says the cost is unknown
    (never the standard price), and the budget is charged what the request reserved, the dearest tier it could
    be served at (priority: ≤ 9 input tokens, as counted, and 1,000 output at $0.45 / $3.60 per million).
    Before, an unknown cost settled the budget at $0, so such answers were free to a hard budget."""
    assert _spent(live, "scaled") == "0.000000000"
    answer = live.chat("scaled", max_tokens=1000)
    assert answer.status_code == 200, answer.text
    row = live.row(answer.headers["x-margin-request-id"])
    assert (row.service_tier, row.cost_nanousd, row.cost_status) == ("scale", None, "unknown_price")
    spent = int(_spent(live, "scaled").replace(".", ""))
    assert 1000 * 3_600 <= spent <= 1000 * 3_600 + 100 * 450, spent
