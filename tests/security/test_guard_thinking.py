"""`pii_output` and an answer's thinking, through a running `margin serve` whose `kind: anthropic` backend calls
a fake Anthropic upstream (tests/backends/anthropic_upstream.py, model `leaky`) that thinks about an e-mail and
a card number. The client gets the thinking as `reasoning_content` and `thinking_blocks` (JSON) or as
`delta.reasoning_content` pieces and `delta.thinking_blocks` entries (a stream): under `pii_output: redact` none
of it holds the values (the stream splits each over two deltas), the signature and the redacted block's data are
unchanged, and the ledger counts each value once; under `log` the answer is unchanged and the values counted.
Before, the guard read only `content`: the thinking reached the client as it was, and nothing was counted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.api.test_anthropic_backend import KEY_ENV, UPSTREAM_KEY
from tests.backends.anthropic_upstream import LEAKY_CARD, LEAKY_EMAIL, LEAKY_THOUGHTS, anthropic_upstream
from tests.helpers import wait_ledger_row
from tests.security.conftest import Served, serving_in
from tests.security.test_guard_pii import guard_of

CHAT = "/v1/chat/completions"
MODEL = "claude-haiku-4-5"
REDACTED = "They wrote from <EMAIL_1> and paid with <CREDIT_CARD_1>; look it up."
COUNTED = {"CREDIT_CARD": 1, "EMAIL": 1}
ASK: Any = {"model": MODEL, "messages": [{"role": "user", "content": "who paid?"}], "reasoning_effort": "low",
            "max_tokens": 4000}  # fmt: skip
LEAKED = ("jane", "4111", LEAKY_EMAIL, LEAKY_CARD)


@dataclass
class Live:
    gw: Served
    redact: str
    log: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with anthropic_upstream() as upstream, pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, UPSTREAM_KEY)
        claude = {"kind": "anthropic", "base_url": upstream.url, "api_key_env": KEY_ENV, "timeout_s": 10}
        models = {MODEL: {"backend": "claude", "upstream_model": "leaky"}}
        overrides = {"backends": {"claude": claude}, "models": models}
        keys = {
            "redact": ["--team", "t", "--policy", json.dumps({"pii_output": "redact"})],
            "log": ["--team", "t", "--policy", json.dumps({"pii_output": "log"})],
        }
        with serving_in(tmp_path_factory.mktemp("thinking-guard"))(overrides, keys=keys) as gw:
            yield Live(gw, gw.keys["redact"], gw.keys["log"])


def _guard(gw: Served, request_id: str) -> dict[str, Any]:
    return guard_of(wait_ledger_row(Path(gw.db), gw.url, request_id))


def _post(gw: Served, key: str) -> tuple[dict[str, Any], str, str]:
    """(the message, the raw answer, its request id)."""
    with gw.client(key) as client:
        reply = client.post(CHAT, json=ASK)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"], reply.text, reply.headers["x-request-id"]


def _stream(gw: Served, key: str) -> tuple[str, list[dict[str, Any]], str, str]:
    """(the reasoning pieces joined, the thinking-block entries, the raw stream, its request id)."""
    reasoning, content, raw = "", "", ""
    blocks: list[dict[str, Any]] = []
    with gw.client(key) as client, client.stream("POST", CHAT, json={**ASK, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            raw += line + "\n"
            if not line.startswith("data: {"):
                continue
            for choice in orjson.loads(line[6:]).get("choices") or []:
                delta = choice.get("delta") or {}
                content += delta.get("content") or ""
                reasoning += delta.get("reasoning_content") or ""
                blocks += delta.get("thinking_blocks") or []
        assert content == "hello world"  # the reasoning's held-back tail went to reasoning_content, not here
        return reasoning, blocks, raw, response.headers["x-request-id"]


def _redacted_blocks() -> list[dict[str, Any]]:
    """`LEAKY_THOUGHTS` as `pii_output: redact` delivers them: the thinking text redacted, its signature and the
    redacted block (opaque data) as the upstream sent them."""
    return [{**LEAKY_THOUGHTS[0], "thinking": REDACTED}, LEAKY_THOUGHTS[1]]


def test_a_json_answer_s_thinking_is_redacted_and_counted_once(live: Live) -> None:
    message, raw, request_id = _post(live.gw, live.redact)
    assert message["reasoning_content"] == REDACTED
    assert message["thinking_blocks"] == _redacted_blocks()  # signature and redacted data byte for byte
    assert not any(value in raw for value in LEAKED), raw
    assert _guard(live.gw, request_id) == {"pii_output": COUNTED, "pii_output_action": "redact"}


def test_a_stream_s_thinking_is_redacted_across_deltas_and_counted_once(live: Live) -> None:
    reasoning, blocks, raw, request_id = _stream(live.gw, live.redact)
    assert reasoning == REDACTED  # held back while a value was still arriving, flushed into reasoning_content
    assert blocks == _redacted_blocks()  # the block's text redacted with the pieces' placeholders
    assert not any(value in raw for value in (*LEAKED, "exa", "mple.com")), raw
    assert _guard(live.gw, request_id) == {"pii_output": COUNTED, "pii_output_action": "redact"}


def test_log_counts_the_thinking_s_values_and_changes_nothing(live: Live) -> None:
    message, _, request_id = _post(live.gw, live.log)
    assert message["thinking_blocks"] == LEAKY_THOUGHTS
    assert message["reasoning_content"] == LEAKY_THOUGHTS[0]["thinking"]
    assert _guard(live.gw, request_id) == {"pii_output": COUNTED, "pii_output_action": "log"}


def test_log_counts_a_stream_s_thinking_too(live: Live) -> None:
    """A stream under `pii_output: log`: what it generated is counted, its reasoning included (it counted the
    delivered content only)."""
    reasoning, blocks, _, request_id = _stream(live.gw, live.log)
    assert reasoning == LEAKY_THOUGHTS[0]["thinking"] and blocks == LEAKY_THOUGHTS  # unchanged
    assert _guard(live.gw, request_id) == {"pii_output": COUNTED, "pii_output_action": "log"}
