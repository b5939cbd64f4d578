"""Issue 13 §2 (schemas, token ids) and §4 (breaker), attacked through a running `margin serve` on the real
local model (llama.cpp): JSON schemas whose grammar would exhaust memory or crash llama.cpp are 400, token ids
outside the vocabulary are 400 before the engine sees them, and neither client errors nor a full queue open
the backend's circuit for everyone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import margin_serve

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
NO_EOS = {"2": -100, "0": -100}  # SmolLM2's end tokens: the answer runs to max_tokens
CONFIG = {
    "storage": {"flush_interval_ms": 10},
    "backends": {"local": {"kind": "llamacpp", "n_ctx": 1024, "max_queue": 0}},  # the builtin SmolLM2
    "models": {"smollm2": {"backend": "local", "aliases": ["local"]}},
    "admission": {"breaker_failures": 2},  # two counted failures would open the circuit
}


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("local-attacks")
    config = tmp / "margin.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    with margin_serve(tmp / "ledger.db", tmp / "serve.log", config=config) as (url, _process):
        yield url


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "local", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4, **extra}


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        node = {"type": "object", "properties": {"a": node}, "required": ["a"]}
    return node


SCHEMAS: dict[str, dict[str, Any]] = {
    "maxLength-1010 (segfaulted llama.cpp)": {"type": "string", "maxLength": 1010},
    "pattern-repeat-1500 (segfaulted)": {"type": "string", "pattern": "^a{0,1500}$"},
    "minItems-1e9 (~18 GB of grammar)": {"type": "array", "items": {"type": "integer"}, "minItems": 10**9},
    "nested-40": nested(40),
    "20-KB": {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(100)}, "x": "y" * 20000},
    "remote-ref": {"$ref": "https://example.invalid/schema.json"},
}


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_schemas_that_would_exhaust_or_crash_the_model_are_400(gateway_url: str, name: str) -> None:
    with httpx.Client(base_url=gateway_url, timeout=60) as client:
        reply = client.post(CHAT, json=chat(response_format=schema_format(SCHEMAS[name])))
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["param"] == "response_format" and error["code"] == "schema_too_complex"
        assert client.get("/readyz").status_code == 200  # the process is alive
        assert client.post(CHAT, json=chat()).status_code == 200


def test_a_bounded_schema_still_constrains_the_answer(gateway_url: str) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    with httpx.Client(base_url=gateway_url, timeout=60) as client:
        reply = client.post(CHAT, json=chat(max_tokens=20, temperature=0, response_format=schema_format(schema)))
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"].lstrip().startswith("{")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(logit_bias={"49152": 5}), "logit_bias"),  # one past SmolLM2's vocabulary (IndexError before)
        (chat(logit_bias={"4294967296": 5}), "logit_bias"),
        (chat(logit_bias={"7": 1000}), "logit_bias"),
        ({"model": "local", "prompt": [60000], "max_tokens": 2}, "prompt"),
    ],
    ids=["vocab", "int32", "bias-range", "prompt-ids"],
)
def test_token_ids_outside_the_vocabulary_are_400(gateway_url: str, body: dict[str, Any], param: str) -> None:
    path = CHAT if "messages" in body else "/v1/completions"
    with httpx.Client(base_url=gateway_url, timeout=60) as client:
        reply = client.post(path, json=body)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text
        assert client.post(CHAT, json=chat()).status_code == 200


def test_client_errors_and_a_full_queue_never_open_the_circuit(gateway_url: str) -> None:
    bad = chat(response_format=schema_format({"type": "string", "maxLength": 5000}))
    with httpx.Client(base_url=gateway_url, timeout=300) as client:
        for _ in range(4):
            assert client.post(CHAT, json=bad).status_code == 400
        long = chat(max_tokens=60, logit_bias=NO_EOS, stream=True)
        with client.stream("POST", CHAT, json=long) as running:
            chunks = running.iter_raw()  # kept: a dropped iterator closes its stream
            assert running.status_code == 200 and next(chunks)
            # the queue is full (max_queue 0) while the long answer runs
            crowded = [client.post(CHAT, json=chat()) for _ in range(4)]
            assert [reply.status_code for reply in crowded] == [503] * 4
            assert crowded[0].json()["error"]["code"] == "server_overloaded"
            assert b"[DONE]" in b"".join(chunks)
        after = client.post(CHAT, json=chat())  # the circuit is still closed: not `backend_unavailable`
        assert after.status_code == 200, after.text
