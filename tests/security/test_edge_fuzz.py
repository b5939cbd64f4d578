"""Hostile JSON bodies at every route that takes one, against a running gateway over real HTTP: hypothesis
puts an attacker's value at each place of a plausible body (each free-form field included: a tool's
`parameters`, a JSON schema, `metadata`, an Anthropic `input_schema`, a tool_use `input`, an embedding's
input), adds it as an unknown or a duplicate key, or drops the key. The values: nesting past the bound (and past
what orjson writes), numbers past a double or a 64-bit integer, lone surrogates, NUL bytes in strings and keys,
wrong types, long strings; and whole bodies that are empty, absent, not an object or not JSON.

Never a 5xx; every error is OpenAI's JSON (Anthropic's under `/v1/messages`); no refused body leaves a ledger
row; and the gateway answers an ordinary request afterwards. The routes come from the app, so a new route is
attacked without being listed here (with a generic body unless `BODIES` gives it a better one)."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from margin.api.edge import BODY_METHODS, FORM_PATHS
from margin.jsonload import MAX_DEPTH
from tests.backends.anthropic_upstream import anthropic_upstream
from tests.security.conftest import FAKE_CONFIG, Served, serving_in
from tests.security.test_edge_contract import anthropic_shaped, openai_shaped

EXAMPLES = int(os.environ.get("MARGIN_FUZZ_EXAMPLES", "60"))  # per route; more for a deeper run
TEAM = {"kind": "team", "value": "fuzz"}  # rules the fuzz creates bind a team that no caller here is in
SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
CHAT_MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": "x"}'}}],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "ok"},
]
ANTHROPIC = {
    "model": "fake-chat",
    "system": "be brief",
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": "x"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
    ],
    "tools": [{"name": "f", "description": "a tool", "input_schema": SCHEMA}],
    "metadata": {"user_id": "u1"},
}
BODIES: dict[str, Any] = {
    "/v1/chat/completions": {
        "model": "fake-chat",
        "messages": CHAT_MESSAGES,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}},
        "metadata": {"k": "v"},
        "logit_bias": {"1": 0},
        "stop": ["zz"],
        "max_tokens": 5,
        "user": "u1",
    },
    "/v1/completions": {"model": "fake-chat", "prompt": ["hi"], "max_tokens": 5, "stop": "zz"},
    "/v1/embeddings": {"model": "fake-embed", "input": ["a", "b"], "encoding_format": "float"},
    "/v1/responses": {
        "model": "fake-chat",
        "instructions": "be brief",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "tools": [{"type": "function", "name": "f", "parameters": SCHEMA}],
        "text": {"format": {"type": "json_schema", "name": "s", "schema": SCHEMA}},
        "metadata": {"k": "v"},
        "max_output_tokens": 16,
    },
    "/v1/responses/input_tokens": {
        "model": "fake-chat",
        "instructions": "be brief",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "tools": [{"type": "function", "name": "f", "parameters": SCHEMA}],
    },
    "/v1/messages": {**ANTHROPIC, "max_tokens": 5},
    "/v1/messages/count_tokens": ANTHROPIC,
    "/admin/keys": {"name": "fuzz", "team": "fuzz", "tags": {"k": "v"}, "expires_in_s": 3600},
    "/admin/budgets": {"name": "fuzz", "scope": TEAM, "usd": "100", "period": "day"},
    "/admin/limits": {"name": "fuzz", "scope": TEAM, "rpm": 100_000},
    "/admin/flags": {"name": "fuzz", "target": TEAM, "action": "cap_max_tokens", "max_tokens": 100},
    "/admin/keys/{key_id}/rotate": {"grace_s": 60},
    "/v1/margin/feedback": [{"request_id": "r1", "success": True, "value": "1", "metadata": {"k": "v"}}],
    "/v1/batches": {
        "input_file_id": "file-x",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"k": "v"},
    },
}
# routes that take a POST but read no JSON body (an upload is multipart): attacked all the same, but not
# expected to refuse what they never read
NOT_JSON = {"/admin/reload", "/v1/batches/{batch_id}/cancel", "/v1/files", "/v1/responses/{response_id}/cancel"}
GENERIC = {"model": "fake-chat", "name": "fuzz", "input": "hi", "metadata": {"k": "v"}}


@dataclass(frozen=True)
class Raw:
    """JSON text written as it is: what `json.dumps` cannot write (1e400, a lone surrogate, a repeated key)."""

    text: str


def write(value: Any) -> str:
    """JSON text of `value`, where a dict may come as a list of (key, value) pairs (a key may repeat)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{write(k)}:{write(v)}" for k, v in value.items) + "}"
    if isinstance(value, dict):
        return write(Pairs(list(value.items())))
    if isinstance(value, list):
        return "[" + ",".join(write(v) for v in value) + "]"
    return json.dumps(value)


@dataclass(frozen=True)
class Pairs:
    items: list[tuple[Any, Any]]


def deep(depth: int, kind: str) -> Raw:
    if kind == "array":
        return Raw("[" * depth + "]" * depth)
    if kind == "object":
        return Raw('{"a":' * depth + "1" + "}" * depth)
    half = (depth + 1) // 2  # two levels a step: at least `depth`
    return Raw('{"a":[' * half + "1" + "]}" * half)


NUMBERS = ["1e400", "-1e400", "-0", "-0.0", "1E-400", str(2**64), str(-(2**63) - 1), str(2**63), "1e308", "9" * 4000]
STRINGS = ['"\\ud800"', '"a\\udfffb"', '"\\u0000"', '"a\\u0000b"', '"\\\\u0000"', '""', '"\\u202e\\ufeff"']
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
hostile = st.one_of(
    st.builds(deep, st.sampled_from([MAX_DEPTH + 1, 300, 1000]), st.sampled_from(["array", "object", "mixed"])),
    st.sampled_from(NUMBERS).map(Raw),
    st.sampled_from(STRINGS).map(Raw),
    st.sampled_from(['{"\\u0000":1}', '{"\\ud800":1}', '{"":{"":[]}}']).map(Raw),
    st.sampled_from([None, True, 0, -1, 1.5, "", "x", [], {}, [None], {"": None}]),
    st.integers(1, 200_000).map(lambda n: "x" * n),
    json_values,
)


def places(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a body: each key of each object and each item of each array (and the body itself)."""
    yield at
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from places(child, (*at, key))


def mutate(value: Any, at: tuple[Any, ...], how: str, new: Any) -> Any:
    """`value` with `new` put at `at` (`how`: replace it, add it under an unknown key there, repeat the key
    with `new` first, or drop the key)."""
    if not at:
        if how == "replace":
            return new
        if isinstance(value, dict) and how in ("add", "repeat"):
            return Pairs([*((k, mutate(v, (), "keep", None)) for k, v in value.items()), ("zz_unknown", new)])
        return value
    head, rest = at[0], at[1:]
    if isinstance(value, list):
        return [mutate(v, rest, how, new) if i == head else v for i, v in enumerate(value)]
    pairs: list[tuple[Any, Any]] = []
    for key, child in value.items():
        if key != head:
            pairs.append((key, child))
        elif rest or how not in ("repeat", "drop"):
            pairs.append((key, mutate(child, rest, how, new)))
        elif how == "repeat":  # the hostile value first: a parser that keeps the first one sees it
            pairs += [(key, new), (key, child)]
    return Pairs(pairs)


def body_routes() -> list[str]:
    """Every route that reads a JSON body, from the app itself."""
    from margin.app import build_app
    from margin.config import parse_settings

    app = build_app(parse_settings(FAKE_CONFIG))
    paths = [getattr(r, "path", "") for r in app.routes if set(getattr(r, "methods", None) or ()) & BODY_METHODS]
    return sorted(p for p in paths if p not in FORM_PATHS)


def method_of(path: str) -> str:
    return "PUT" if path in ("/admin/budgets", "/admin/limits", "/admin/flags") else "POST"


@dataclass
class Attack:
    gw: Served
    http: httpx.Client
    refused: set[str]  # request ids of the bodies refused (4xx but 404)
    statuses: dict[int, int]

    def send(self, path: str, content: bytes | None, **headers: str) -> httpx.Response:
        url = re.sub(r"\{[^}]+\}", "x", path)
        sent = {"content-type": "application/json", **headers}
        response = self.http.request(method_of(path), url, content=content, headers=sent)
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        shown = (path, (content or b"")[:300], response.text[:500])
        assert response.status_code < 500, shown
        if response.status_code >= 400:
            shaped = anthropic_shaped if path.startswith("/v1/messages") else openai_shaped
            assert shaped(response.json()), shown
            if response.status_code != 404 and "x-request-id" in response.headers:
                # a well-formed body that names no model we serve is routed, and its 404 is on the ledger
                self.refused.add(response.headers["x-request-id"])
        return response


@pytest.fixture(scope="module")
def attack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attack]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    with serving_in(folder)(keys={"admin": ["--admin"], "user": []}) as gw:
        headers = {"authorization": f"Bearer {gw.keys['admin']}"}
        with httpx.Client(base_url=gw.url, headers=headers, timeout=60) as http:
            yield Attack(gw, http, set(), {})


@pytest.mark.parametrize("path", [p for p in body_routes() if p not in NOT_JSON])
def test_a_body_nested_past_the_bound_is_400_before_anything_else(attack: Attack, path: str) -> None:
    """At each place of each route's body, and as the whole body: one level past the bound, and past what
    orjson writes (a 500 before, wherever margin wrote the body again), is refused before the body is
    validated (the rest of it may be invalid: a missing key, a wrong id)."""
    base = BODIES.get(path, GENERIC)
    for at, depth in itertools.product(places(base), (MAX_DEPTH + 1, 300)):
        body = write(mutate(base, at, "replace", deep(depth, "mixed")))
        refused = attack.send(path, body.encode())
        error = refused.json()["error"]
        assert refused.status_code == 400 and str(MAX_DEPTH) in error["message"], (path, at, refused.text[:300])
        assert error["type"] == "invalid_request_error", (path, at, refused.text[:300])


@pytest.mark.parametrize("path", body_routes())
def test_hostile_bodies_get_4xx_in_the_api_s_error_shape(attack: Attack, path: str) -> None:
    base = BODIES.get(path, GENERIC)
    for whole in (None, b"", b" ", b"null", b"[]", b"1", b'"x"', b"[{}]", b"{", b"\xff\xfe", b'"\\ud800"'):
        attack.send(path, whole)
    attack.send(path, write(mutate(base, (), "add", "x" * 3_000_000)).encode())  # long, within the body limit

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        at=st.sampled_from(list(places(base))),
        how=st.sampled_from(["replace", "add", "repeat", "drop"]),
        new=hostile,
    )
    def fuzz(at: tuple[Any, ...], how: str, new: Any) -> None:
        attack.send(path, write(mutate(base, at, how, new)).encode())

    fuzz()


def test_afterwards_the_gateway_answers_and_no_refused_body_left_a_ledger_row(attack: Attack) -> None:
    """Runs after the attacks above (pytest keeps the file's order)."""
    assert attack.refused, "the attacks above did not run"
    hi = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
    with attack.gw.client(attack.gw.keys["user"]) as client:
        answered = client.post("/v1/chat/completions", json=hi)
    assert answered.status_code == 200, answered.text[:300]
    served = answered.headers["x-request-id"]
    deadline = time.monotonic() + 30
    while served not in {cast("str", row.request_id) for row in attack.gw.rows()}:
        assert time.monotonic() < deadline, "the ordinary request's row never reached the ledger"
        time.sleep(0.1)
    rows = attack.gw.rows()
    leaked = {(r.endpoint, r.http_status, r.error_code) for r in rows if r.request_id in attack.refused}
    assert not leaked, sorted(leaked)
    print("statuses", sorted(attack.statuses.items()))


def test_tool_call_arguments_nested_past_the_bound_are_400_for_an_anthropic_backend(tmp_path: Path) -> None:
    """A chat request's tool call arguments are a string, so the edge's bound does not see into them; an
    anthropic backend parses them into a tool_use `input`. 300 levels parsed and failed where the upstream
    request was written: a 502 `backend_exception` (the backend blamed for the caller's body)."""
    deep = '{"a":' * 300 + "1" + "}" * 300
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": deep}}
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    messages.append({"role": "tool", "tool_call_id": "c1", "content": "ok"})
    with anthropic_upstream() as upstream, pytest.MonkeyPatch.context() as patch:
        patch.setenv("MARGIN_TEST_ANTHROPIC_KEY", "sk-ant-test-not-a-real-key")
        claude = {"kind": "anthropic", "base_url": upstream.url, "api_key_env": "MARGIN_TEST_ANTHROPIC_KEY"}
        config = {"backends": {"claude": claude}, "models": {"claude-haiku-4-5": {"backend": "claude"}}}
        with serving_in(tmp_path)(config) as gw, gw.client() as client:
            body = {"model": "claude-haiku-4-5", "messages": messages, "max_tokens": 5}
            refused = client.post("/v1/chat/completions", json=body)
    assert refused.status_code == 400 and openai_shaped(refused.json()), refused.text[:300]
    assert refused.json()["error"]["param"] == "messages[1].tool_calls[0]"
