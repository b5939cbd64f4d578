"""`POST /v1/messages/count_tokens` end to end: the `anthropic` SDK's `messages.count_tokens` against a running
`margin serve` whose `anthropic` backend calls a fake Anthropic upstream over real HTTP. The count is Anthropic's
(the upstream's), for the body the client sent with the upstream's model name; the caller is authenticated and
held to its key's policy and RPM limit as on `/v1/messages`; a model whose backend cannot count is refused, never
estimated; a count writes no ledger row and shows in /metrics. And `drop_unsupported`: a chat field the backend
lists is left out of what Anthropic receives, and the answer's `x-margin-dropped-params` says so. And `POST
/v1/responses/input_tokens` (the `openai` SDK's `responses.input_tokens.count`): the Messages count_tokens body a
completion of the Responses request would send, held to the same policy, refused in OpenAI's shape; a routed name
is refused on both. Before: /v1/messages/count_tokens was a 404, and `seed` on an anthropic backend always a 400;
then /v1/responses/input_tokens was a 405."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml

from margin import keys
from margin.ledger import db as ledger_db
from tests.api.test_anthropic_backend import KEY_ENV, UPSTREAM_KEY
from tests.api.test_messages_to_anthropic import TOOL
from tests.backends.anthropic_upstream import Upstream, anthropic_upstream, counted
from tests.helpers import ledger_rows, margin_serve, wait_ledger_row

PUBLIC, UPSTREAM_MODEL = "haiku", "claude-haiku-4-5"
HI: Any = [{"role": "user", "content": "hi"}]


@dataclass
class Gateway:
    url: str
    db: Path
    upstream: Upstream
    keys: dict[str, str]

    def client(self, key: str = "user") -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key=self.keys.get(key, key), max_retries=0)

    def openai(self, key: str = "user") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.keys.get(key, key), max_retries=0)


def _keys(db: Path) -> dict[str, str]:
    url = f"sqlite:///{db}"
    ledger_db.upgrade(url)
    engine = ledger_db.make_sync_engine(url)
    made = {
        "user": keys.NewKey("user", "t"),
        "narrow": keys.NewKey("narrow", "t", policy={"models": ["local"]}),
        "limited": keys.NewKey("limited", "limited"),
        "private": keys.NewKey("private", "t", policy={"pii": "redact"}),
        "admin": keys.NewKey("admin", is_admin=True),
    }
    try:
        return {name: keys.create_key(engine, spec)[1] for name, spec in made.items()}
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("count-tokens")
    made = _keys(folder / "ledger.db")
    with anthropic_upstream() as upstream, pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, UPSTREAM_KEY)
        claude = {"kind": "anthropic", "base_url": upstream.url, "api_key_env": KEY_ENV, "timeout_s": 10}
        dropping = {**claude, "drop_unsupported": ["seed", "presence_penalty", "name"]}
        config = {
            "storage": {"flush_interval_ms": 10},
            "backends": {"claude": claude, "dropping": dropping, "fake": {"kind": "fake", "output_tokens": 3}},
            "models": {
                PUBLIC: {"backend": "claude", "upstream_model": UPSTREAM_MODEL},
                "dropper": {"backend": "dropping", "upstream_model": UPSTREAM_MODEL},
                "local": {"backend": "fake"},
                "switched-off": {"backend": "claude"},
                "forced": {"backend": "fake"},
                "rejected": {"backend": "claude", "upstream_model": "rejecting"},
            },
            "routes": {"either": {"policy": "lowest-cost", "ladder": [PUBLIC, "dropper"]}},
            "limits": [{"scope": {"kind": "team", "value": "limited"}, "rpm": 1}],
            "flags": [
                {"name": "off", "target": {"kind": "model", "value": "switched-off"}, "action": "disable"},
                {
                    "name": "to-haiku",
                    "target": {"kind": "model", "value": "forced"},
                    "action": "force_model",
                    "model": PUBLIC,
                },
            ],
        }
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        serving = margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with serving as (url, _process):
            yield Gateway(url, folder / "ledger.db", upstream, made)


def test_the_count_is_anthropic_s_for_the_body_sent_with_the_upstream_model(gateway: Gateway) -> None:
    system: Any = [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}]
    thinking: Any = {"type": "enabled", "budget_tokens": 2048}
    with gateway.client() as client:
        raw = client.messages.with_raw_response.count_tokens(
            model=PUBLIC, messages=HI, system=system, tools=[TOOL], tool_choice={"type": "auto"}, thinking=thinking
        )
    sent = {"model": UPSTREAM_MODEL, "messages": HI, "system": system, "tools": [TOOL],
            "tool_choice": {"type": "auto"}, "thinking": thinking}  # fmt: skip
    assert gateway.upstream.paths[-1] == "/v1/messages/count_tokens"
    assert gateway.upstream.last == sent  # the client's body as it came, but for the model's upstream name
    assert raw.parse().input_tokens == counted(sent) > 0
    headers = gateway.upstream.headers[-1]
    assert (headers["x-api-key"], headers["anthropic-version"]) == (UPSTREAM_KEY, "2023-06-01")
    request_id = raw.headers["request-id"]
    assert raw.headers["x-request-id"] == request_id
    with gateway.client() as client:  # a completion after it: once its row is in, the count's would be too
        later = client.messages.with_raw_response.create(model=PUBLIC, max_tokens=8, messages=HI)
    wait_ledger_row(gateway.db, gateway.url, later.headers["x-request-id"])
    assert ledger_rows(gateway.db, request_id) == 0  # a count is not metered: no ledger row
    scraped = httpx.get(gateway.url + "/metrics", headers={"authorization": f"Bearer {gateway.keys['admin']}"})
    assert f'margin_count_tokens_total{{model="{PUBLIC}",outcome="ok"}} 1.0' in scraped.text


def test_the_caller_is_authenticated_and_the_model_resolved(gateway: Gateway) -> None:
    sent = len(gateway.upstream.bodies)
    with gateway.client("sk-not-a-key") as client, pytest.raises(anthropic.AuthenticationError):
        client.messages.count_tokens(model=PUBLIC, messages=HI)
    with gateway.client() as client, pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.count_tokens(model="no-such-model", messages=HI)
    error: Any = unknown.value.body
    assert (error["type"], error["error"]["type"]) == ("error", "not_found_error")
    assert len(gateway.upstream.bodies) == sent  # nothing reached the upstream


def test_a_model_whose_backend_cannot_count_is_refused_not_estimated(gateway: Gateway) -> None:
    with gateway.client() as client, pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.count_tokens(model="local", messages=HI)
    error: Any = refused.value.body
    assert error["error"]["type"] == "invalid_request_error"
    assert "token counting is not available for the model `local`" in error["error"]["message"]


def test_an_upstream_refusal_is_the_caller_s_in_anthropic_s_shape(gateway: Gateway) -> None:
    with gateway.client() as client, pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.count_tokens(model="rejected", messages=HI)
    assert gateway.upstream.last["model"] == "rejecting"
    assert "internal-host-7" not in refused.value.message  # the upstream's own text is not passed on


def test_flags_apply_as_to_a_request(gateway: Gateway) -> None:
    with gateway.client() as client:
        with pytest.raises(anthropic.PermissionDeniedError) as off:
            client.messages.count_tokens(model="switched-off", messages=HI)
        assert "disabled by flag `off`" in off.value.message
        # forced to the anthropic model: counted there, though `forced` itself is on a backend that cannot count
        assert client.messages.count_tokens(model="forced", messages=HI).input_tokens > 0
    assert gateway.upstream.last["model"] == UPSTREAM_MODEL


def test_a_key_whose_policy_forbids_the_model_is_refused(gateway: Gateway) -> None:
    sent = len(gateway.upstream.bodies)
    with gateway.client("narrow") as client, pytest.raises(anthropic.PermissionDeniedError) as refused:
        client.messages.count_tokens(model=PUBLIC, messages=HI)
    assert f"may not use the model `{PUBLIC}`" in refused.value.message
    assert len(gateway.upstream.bodies) == sent


def test_a_key_whose_policy_redacts_pii_is_refused_not_sent_unscanned(gateway: Gateway) -> None:
    sent = len(gateway.upstream.bodies)
    with gateway.client("private") as client, pytest.raises(anthropic.PermissionDeniedError) as refused:
        client.messages.count_tokens(model=PUBLIC, messages=[{"role": "user", "content": "mail ann@example.com"}])
    assert "redacts PII" in refused.value.message
    assert len(gateway.upstream.bodies) == sent


def test_a_count_is_one_request_for_rpm(gateway: Gateway) -> None:
    with gateway.client("limited") as client:
        assert client.messages.count_tokens(model=PUBLIC, messages=HI).input_tokens > 0
        with pytest.raises(anthropic.RateLimitError) as limited:
            client.messages.count_tokens(model=PUBLIC, messages=HI)
    assert limited.value.response.headers["retry-after"]


def test_the_body_is_validated_as_a_messages_prompt(gateway: Gateway) -> None:
    auth = {"x-api-key": gateway.keys["user"]}
    server_tool = {"type": "web_search_20250305", "name": "w"}  # margin runs no tools
    bodies: Any = [{"model": PUBLIC, "messages": []}, {"model": PUBLIC, "messages": HI, "max_tokens": 5},
                   {"model": PUBLIC, "messages": HI, "tools": [server_tool]}]  # fmt: skip
    for body in bodies:
        answer = httpx.post(gateway.url + "/v1/messages/count_tokens", json=body, headers=auth, timeout=10)
        assert answer.status_code == 400, answer.text
        assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "invalid_request_error"


def test_drop_unsupported_leaves_the_fields_out_and_says_so(gateway: Gateway) -> None:
    messages: Any = [{"role": "user", "content": "hi", "name": "ann"}]
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.keys["user"], max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="dropper", messages=messages, seed=7, presence_penalty=0.5, max_tokens=8
        )
        assert raw.headers["x-margin-dropped-params"] == "seed,presence_penalty,name"
        sent = gateway.upstream.last
        assert not {"seed", "presence_penalty"} & set(sent)
        assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
        plain = client.chat.completions.with_raw_response.create(model="dropper", messages=HI, max_tokens=8)
        assert "x-margin-dropped-params" not in plain.headers  # nothing dropped: no header
        with pytest.raises(openai.BadRequestError) as refused:  # a backend without the option still refuses
            client.chat.completions.create(model=PUBLIC, messages=HI, seed=7, max_tokens=8)
    assert "seed" in refused.value.message


def test_a_routed_name_is_refused_the_model_is_chosen_per_request(gateway: Gateway) -> None:
    sent = len(gateway.upstream.bodies)
    with gateway.client() as client, pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.count_tokens(model="either", messages=HI)
    assert "routed name `either`" in refused.value.message
    with gateway.openai() as client, pytest.raises(openai.BadRequestError) as routed:
        client.responses.input_tokens.count(model="either", input="hi")
    assert routed.value.code == "count_tokens_unavailable" and "routed name `either`" in routed.value.message
    assert len(gateway.upstream.bodies) == sent


def test_input_tokens_of_a_responses_request_are_anthropic_s_count_of_its_translation(gateway: Gateway) -> None:
    tool: Any = {"type": "function", "name": TOOL["name"], "description": TOOL["description"],
                 "parameters": TOOL["input_schema"]}  # fmt: skip
    items: Any = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                  {"role": "user", "content": "weather in Paris?"}]  # fmt: skip
    with gateway.openai() as client:
        raw = client.responses.input_tokens.with_raw_response.count(
            model=PUBLIC, instructions="be brief", input=items, tools=[tool]
        )
    answer = raw.parse()
    assert gateway.upstream.paths[-1] == "/v1/messages/count_tokens"
    sent = gateway.upstream.last  # the Messages body a completion would send, less its output limit and sampling
    assert sent == {
        "model": UPSTREAM_MODEL,
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
                     {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]}],
        "tools": [TOOL],
    }  # fmt: skip
    assert (answer.object, answer.input_tokens) == ("response.input_tokens", counted(sent))
    wait_ledger_row(gateway.db, gateway.url, _completed(gateway))  # a completion after it: its row is in
    assert ledger_rows(gateway.db, raw.headers["x-request-id"]) == 0  # a count is not metered


def _completed(gateway: Gateway) -> str:
    with gateway.openai() as client:
        later = client.responses.with_raw_response.create(model=PUBLIC, input="hi", max_output_tokens=8)
    return later.headers["x-request-id"]


def test_input_tokens_are_refused_in_openai_s_shape_as_a_response_would_be(gateway: Gateway) -> None:
    sent = len(gateway.upstream.bodies)
    with gateway.openai("sk-not-a-key") as client, pytest.raises(openai.AuthenticationError):
        client.responses.input_tokens.count(model=PUBLIC, input="hi")
    with gateway.openai() as client:
        with pytest.raises(openai.NotFoundError) as unknown:
            client.responses.input_tokens.count(model="no-such-model", input="hi")
        assert unknown.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as local:  # the fake backend cannot count: never estimated
            client.responses.input_tokens.count(model="local", input="hi")
        assert local.value.code == "count_tokens_unavailable" and local.value.param == "model"
        with pytest.raises(openai.BadRequestError) as invalid:  # validated as a Responses request's input
            client.responses.input_tokens.count(model=PUBLIC, input=[{"type": "item_reference", "id": "x"}])
        assert invalid.value.param == "input.0.type"
    with gateway.openai("narrow") as client, pytest.raises(openai.PermissionDeniedError) as forbidden:
        client.responses.input_tokens.count(model=PUBLIC, input="hi")
    assert f"may not use the model `{PUBLIC}`" in forbidden.value.message
    with gateway.openai("private") as client, pytest.raises(openai.PermissionDeniedError) as private:
        client.responses.input_tokens.count(model=PUBLIC, input="mail ann@example.com")
    assert "redacts PII" in private.value.message
    assert len(gateway.upstream.bodies) == sent  # nothing reached the upstream
    scraped = httpx.get(gateway.url + "/metrics", headers={"authorization": f"Bearer {gateway.keys['admin']}"})
    assert 'margin_count_tokens_total{model="local",outcome="count_tokens_unavailable"}' in scraped.text
