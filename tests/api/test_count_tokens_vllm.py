"""Token counts for a model on an `openai` backend in front of vLLM (`count_tokens: vllm`), end to end: a running
`margin serve` whose backend calls a fake vLLM server (tests.backends.vllm_upstream) over real HTTP, the official
`anthropic` SDK (`messages.count_tokens`) and `openai` SDK (`responses.input_tokens.count`) as clients. The count
is vLLM's `/tokenize` count of the chat request a completion sends (the same messages and tools, the upstream's
model name, the backend's key), so it is that completion's input tokens; a bad answer from the upstream (not a
number, negative, past 2^31 - 1, a fraction, missing, an HTML page, a 500, too slow) is a clean error in the
endpoint's shape, never an invented count; a backend left at `count_tokens: none` is still the 400. Before: every
model on an `openai` backend was the 400 `count_tokens_unavailable`, and `count_tokens` was no backend option."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml
from pydantic import ValidationError

from margin.backend_config import OpenAIBackendConfig
from tests.api.test_count_tokens import Gateway, _keys
from tests.api.test_messages_to_anthropic import TOOL
from tests.backends.vllm_upstream import tokenized, vllm_upstream
from tests.helpers import ledger_rows, margin_serve, wait_ledger_row

KEY_ENV, UPSTREAM_KEY = "MARGIN_TEST_VLLM_KEY", "sk-vllm-test-not-a-real-key"
PUBLIC, UPSTREAM_MODEL = "qwen", "Qwen/Qwen3-8B"
HI: Any = [{"role": "user", "content": "hi"}]
BAD = ["text", "negative", "huge", "fraction", "missing", "html", "broken"]
FAILED = {"broken": (502, "upstream_error"), "slow": (504, "upstream_timeout")}  # the rest: 502 upstream_bad_response


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("count-vllm")
    made = _keys(folder / "ledger.db")
    with vllm_upstream() as upstream, pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, UPSTREAM_KEY)
        plain = {"kind": "openai", "base_url": upstream.url, "api_key_env": KEY_ENV, "timeout_s": 10}
        vllm = {**plain, "count_tokens": "vllm"}
        impatient, tight = {**vllm, "timeout_s": 1}, {**vllm, "max_response_bytes": 512}
        models = {name: {"backend": "vllm", "upstream_model": name} for name in BAD}
        config = {
            "storage": {"flush_interval_ms": 10},
            "backends": {"vllm": vllm, "plain": plain, "impatient": impatient, "tight": tight},
            "models": {
                PUBLIC: {"backend": "vllm", "upstream_model": UPSTREAM_MODEL},
                "uncounted": {"backend": "plain", "upstream_model": UPSTREAM_MODEL},
                "slow": {"backend": "impatient", "upstream_model": "slow"},
                "tight": {"backend": "tight", "upstream_model": UPSTREAM_MODEL},
                **models,
            },
            "limits": [{"scope": {"kind": "team", "value": "limited"}, "rpm": 1}],
        }
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        serving = margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with serving as (url, _process):
            yield Gateway(url, folder / "ledger.db", upstream, made)


def _metrics(gateway: Gateway) -> str:
    return httpx.get(gateway.url + "/metrics", headers={"authorization": f"Bearer {gateway.keys['admin']}"}).text


def test_the_count_is_vllm_s_for_the_chat_request_a_completion_sends(gateway: Gateway) -> None:
    messages: Any = [{"role": "user", "content": "weather in Paris?"}]
    with gateway.client() as client:
        raw = client.messages.with_raw_response.count_tokens(
            model=PUBLIC, system="be brief", messages=messages, tools=[TOOL]
        )
        count = raw.parse().input_tokens
        upstream = gateway.upstream
        assert upstream.paths[-1] == "/tokenize"  # at the server's root, beside /v1
        asked = upstream.last
        assert upstream.headers[-1]["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert set(asked) == {"model", "messages", "tools", "add_generation_prompt"}
        assert (asked["model"], asked["add_generation_prompt"]) == (UPSTREAM_MODEL, True)
        assert asked["messages"][0] == {"role": "system", "content": "be brief"}
        assert asked["tools"][0]["function"]["name"] == TOOL["name"]
        assert count == tokenized(asked) > 0
        completed = client.messages.with_raw_response.create(
            model=PUBLIC, system="be brief", messages=messages, tools=[TOOL], max_tokens=8
        )
    sent = upstream.last
    assert upstream.paths[-1] == "/v1/chat/completions"
    assert (sent["model"], sent["messages"], sent["tools"]) == (asked["model"], asked["messages"], asked["tools"])
    assert completed.parse().usage.input_tokens == count  # the count is the completion's input
    wait_ledger_row(gateway.db, gateway.url, completed.headers["x-request-id"])
    assert ledger_rows(gateway.db, raw.headers["x-request-id"]) == 0  # a count is not metered
    assert f'margin_count_tokens_total{{model="{PUBLIC}",outcome="ok"}}' in _metrics(gateway)


def test_input_tokens_of_a_responses_request_are_vllm_s_count_of_its_chat(gateway: Gateway) -> None:
    items: Any = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                  {"role": "user", "content": "and now?"}]  # fmt: skip
    with gateway.openai() as client:
        answer = client.responses.input_tokens.count(model=PUBLIC, instructions="be brief", input=items)
        asked = gateway.upstream.last
        assert gateway.upstream.paths[-1] == "/tokenize"
        assert asked["model"] == UPSTREAM_MODEL and "tools" not in asked
        assert [turn["role"] for turn in asked["messages"]] == ["system", "user", "assistant", "user"]
        assert (answer.object, answer.input_tokens) == ("response.input_tokens", tokenized(asked))
        response = client.responses.create(model=PUBLIC, instructions="be brief", input=items, max_output_tokens=8)
    assert gateway.upstream.last["messages"] == asked["messages"]
    assert response.usage is not None and response.usage.input_tokens == answer.input_tokens


@pytest.mark.parametrize("model", [*BAD, "slow"])
def test_a_bad_upstream_answer_is_a_clean_error_never_a_count(gateway: Gateway, model: str) -> None:
    with gateway.client() as client, pytest.raises(anthropic.APIStatusError) as failed:
        client.messages.count_tokens(model=model, messages=HI)
    assert gateway.upstream.paths[-1] == "/tokenize" and gateway.upstream.last["model"] == model
    status, code = FAILED.get(model, (502, "upstream_bad_response"))
    body: Any = failed.value.body
    assert failed.value.status_code == status and body["type"] == "error", body
    assert body["error"]["type"] == "api_error" and "internal-host" not in str(body) and "Traceback" not in str(body)
    with gateway.openai() as client, pytest.raises(openai.APIStatusError) as shaped:
        client.responses.input_tokens.count(model=model, input="hi")
    assert (shaped.value.status_code, shaped.value.code) == (status, code)
    assert f'margin_count_tokens_total{{model="{model}",outcome="{code}"}} 2.0' in _metrics(gateway)


def test_the_answer_is_read_within_the_backend_s_bound(gateway: Gateway) -> None:
    with gateway.client() as client:  # vLLM's answer lists every token id: a long prompt's is long
        assert client.messages.count_tokens(model="tight", messages=HI).input_tokens == tokenized(gateway.upstream.last)
        with pytest.raises(anthropic.InternalServerError) as failed:
            client.messages.count_tokens(model="tight", messages=[{"role": "user", "content": "word " * 400}])
    body: Any = failed.value.body
    assert failed.value.status_code == 502 and "max_response_bytes" in body["error"]["message"]


def test_a_count_is_one_request_for_rpm_and_a_refused_one_asks_nothing(gateway: Gateway) -> None:
    with gateway.client("limited") as client:
        assert client.messages.count_tokens(model=PUBLIC, messages=HI).input_tokens > 0
        asked = len(gateway.upstream.bodies)
        with pytest.raises(anthropic.RateLimitError):
            client.messages.count_tokens(model=PUBLIC, messages=HI)
    assert len(gateway.upstream.bodies) == asked


def test_a_backend_left_at_none_is_still_refused_not_estimated(gateway: Gateway) -> None:
    sent = len(gateway.upstream.bodies)
    with gateway.client() as client, pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.count_tokens(model="uncounted", messages=HI)
    error: Any = refused.value.body
    assert error["error"]["type"] == "invalid_request_error"
    assert "token counting is not available for the model `uncounted`" in error["error"]["message"]
    with gateway.openai() as client, pytest.raises(openai.BadRequestError) as shaped:
        client.responses.input_tokens.count(model="uncounted", input="hi")
    assert shaped.value.code == "count_tokens_unavailable"
    assert len(gateway.upstream.bodies) == sent  # nothing was asked upstream


def test_the_option_is_typed_and_off_by_default() -> None:
    assert OpenAIBackendConfig(base_url="http://vllm:8000/v1").count_tokens == "none"
    assert OpenAIBackendConfig(base_url="http://vllm:8000/v1/", count_tokens="vllm").count_tokens == "vllm"
    with pytest.raises(ValidationError, match="ending in /v1"):  # /tokenize is found beside /v1
        OpenAIBackendConfig(base_url="http://vllm:8000/api", count_tokens="vllm")
    with pytest.raises(ValidationError):  # OpenAI's own count is not an option (see README)
        OpenAIBackendConfig(base_url="http://vllm:8000/v1", count_tokens="openai")
