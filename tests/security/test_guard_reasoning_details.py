"""OpenRouter's `reasoning_details` through a running `margin serve` over real HTTP, the official openai SDK as the
client, an OpenRouter-like upstream (below) that records what it is sent and answers with `reasoning` and
`reasoning_details` (a `reasoning.text` entry with a signature, a `reasoning.encrypted` one; a stream sends the
text in pieces, an e-mail split over two of them, then the signature, then the encrypted entry):

- under `pii_output: redact` no value reaches the client in an entry (JSON or stream), the signature and the
  encrypted entry are unchanged, and the ledger counts each value once;
- under `log` an answer whose only reasoning is its details has their values counted;
- an answer over `guard.max_scan_chars` is withheld without its `reasoning_details` (JSON and stream);
- an assistant message sent back with `reasoning_details` reaches the upstream unchanged; hostile ones are a 400
  naming the field, with nothing sent upstream and no ledger row.

Before, the guard did not read `reasoning_details`: the values reached the client in them, a withheld answer still
carried them, and `log` counted nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import openai
import pytest

from margin.guard.stream import WITHHELD
from tests.helpers import ledger_rows, wait_ledger_row
from tests.security.conftest import Served, serving_in
from tests.security.test_guard_pii import guard_of
from tests.servers import http_thread, recording_handler, reply_events, reply_json

EMAIL = "jane.doe@example.org"
CARD = "4111 1111 1111 1111"
PIECES = ["The user is jane.doe@exa", "mple.org and paid with ", CARD, "; I answer briefly."]
THOUGHT = "".join(PIECES)
REDACTED = "The user is <EMAIL_1> and paid with <CREDIT_CARD_1>; I answer briefly."
SIGNATURE = "EqQBCkYIBxgCKkCz+/=="
ENCRYPTED = {"type": "reasoning.encrypted", "data": "gAAAAABoZW5j", "id": "rs_1", "format": "openai-responses-v1",
             "index": 1}  # fmt: skip
TEXT_ENTRY = {"type": "reasoning.text", "format": "anthropic-claude-v1", "index": 0}
LONG = f"Then {EMAIL} again. " * 120  # 3,600 characters, read twice (reasoning and its details): over the cap
MAX_SCAN_CHARS = 5_000
COUNTED = {"CREDIT_CARD": 1, "EMAIL": 1}
ASK: Any = [{"role": "user", "content": "who paid?"}]


def _details(model: str) -> list[dict[str, Any]]:
    if model == "summary":
        return [{"type": "reasoning.summary", "summary": f"Mail {EMAIL}.", "format": "unknown", "index": 0}]
    text = LONG if model == "long" else THOUGHT
    return [{**TEXT_ENTRY, "text": text, "signature": SIGNATURE}, dict(ENCRYPTED)]


def _message(model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "ok", "reasoning_details": _details(model)}
    if model != "summary":  # OpenRouter's `reasoning`: the text entries joined
        message["reasoning"] = LONG if model == "long" else THOUGHT
    return message


def _deltas(model: str) -> Iterator[dict[str, Any]]:
    pieces = [LONG[i : i + 600] for i in range(0, len(LONG), 600)] if model == "long" else PIECES
    for piece in pieces:
        yield {"role": "assistant", "content": "", "reasoning": piece,
               "reasoning_details": [{**TEXT_ENTRY, "text": piece}]}  # fmt: skip
    yield {"content": "", "reasoning_details": [{**TEXT_ENTRY, "text": "", "signature": SIGNATURE}, dict(ENCRYPTED)]}
    yield {"content": "ok"}


def _answer(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    model = str(body.get("model"))
    base = {"id": "gen-1", "created": 1, "model": model}
    if not body.get("stream"):
        choice = {"index": 0, "message": _message(model), "finish_reason": "stop"}
        reply_json(handler, 200, {**base, "object": "chat.completion", "choices": [choice]})
        return
    chunks = [{**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d, "finish_reason": None}]}
              for d in _deltas(model)]  # fmt: skip
    last = {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    reply_events(handler, [*chunks, last])


@dataclass
class Live:
    gw: Served
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def client(self, name: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gw.url + "/v1", api_key=self.gw.keys[name], max_retries=0)

    def guard(self, request_id: str) -> dict[str, Any]:
        return guard_of(wait_ledger_row(Path(self.gw.db), self.gw.url, request_id))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    bodies: list[dict[str, Any]] = []
    with http_thread(recording_handler(bodies, _answer)) as base:
        backend = {"kind": "openai", "base_url": f"{base}/v1", "timeout_s": 10, "retries": {"attempts": 0}}
        models = {name: {"backend": "router", "upstream_model": name} for name in ("leaky", "long", "summary")}
        overrides = {"backends": {"router": backend}, "models": models, "guard": {"max_scan_chars": MAX_SCAN_CHARS}}
        keys = {
            "redact": ["--team", "t", "--policy", json.dumps({"pii_output": "redact"})],
            "log": ["--team", "t", "--policy", json.dumps({"pii_output": "log"})],
            "plain": ["--team", "t"],
        }
        with serving_in(tmp_path_factory.mktemp("reasoning-details"))(overrides, keys=keys) as gw:
            yield Live(gw, bodies)


def _post(live: Live, key: str, model: str) -> tuple[dict[str, Any], str, str]:
    """(the message as the SDK parsed it, the raw answer, its request id)."""
    with live.client(key) as client:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=ASK)
    message = raw.parse().choices[0].message.model_dump()
    return message, raw.text, raw.headers["x-request-id"]


def _stream(live: Live, key: str, model: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """(the deltas, the details entries of all of them, the request id)."""
    with (
        live.client(key) as client,
        client.chat.completions.with_streaming_response.create(model=model, messages=ASK, stream=True) as raw,
    ):
        request_id = raw.headers["x-request-id"]
        deltas = [choice.delta.model_dump() for chunk in raw.parse() for choice in chunk.choices]
    return deltas, [entry for delta in deltas for entry in delta.get("reasoning_details") or []], request_id


def test_a_json_answer_s_details_are_redacted_and_counted_once(live: Live) -> None:
    message, raw, request_id = _post(live, "redact", "leaky")
    assert message["reasoning"] == REDACTED
    assert message["reasoning_details"] == [{**TEXT_ENTRY, "text": REDACTED, "signature": SIGNATURE}, ENCRYPTED]
    assert EMAIL not in raw and "4111" not in raw, raw
    assert live.guard(request_id) == {"pii_output": COUNTED, "pii_output_action": "redact"}


def test_a_stream_s_details_are_redacted_across_deltas_and_counted_once(live: Live) -> None:
    deltas, entries, request_id = _stream(live, "redact", "leaky")
    assert "".join(entry.get("text") or "" for entry in entries) == REDACTED  # the held-back tail: one more entry
    assert "".join(delta.get("reasoning") or "" for delta in deltas) == REDACTED
    assert {**TEXT_ENTRY, "text": "", "signature": SIGNATURE} in entries and ENCRYPTED in entries
    assert not any(value in json.dumps(deltas) for value in ("jane", "exa", "mple.org", "4111")), deltas
    assert live.guard(request_id) == {"pii_output": COUNTED, "pii_output_action": "redact"}


def test_log_counts_values_that_only_the_details_hold(live: Live) -> None:
    message, _, request_id = _post(live, "log", "summary")
    assert message["reasoning_details"] == _details("summary")  # unchanged
    assert live.guard(request_id) == {"pii_output": {"EMAIL": 1}, "pii_output_action": "log"}


def test_a_withheld_json_answer_has_no_details(live: Live) -> None:
    message, raw, request_id = _post(live, "redact", "long")
    assert message["content"] == WITHHELD and message.get("reasoning_details") is None
    assert EMAIL not in raw and "gAAAAAB" not in raw, raw
    assert "max_scan_chars" in live.guard(request_id)["pii_output_scan_limit"]


def test_a_withheld_stream_sends_no_details_after_the_cap(live: Live) -> None:
    deltas, _, request_id = _stream(live, "redact", "long")
    cut = next(i for i, delta in enumerate(deltas) if WITHHELD in (delta.get("reasoning") or ""))
    assert [i for i, delta in enumerate(deltas) if delta.get("reasoning_details")] == list(range(cut))
    assert EMAIL not in json.dumps(deltas) and "gAAAAAB" not in json.dumps(deltas)
    assert "max_scan_chars" in live.guard(request_id)["pii_output_scan_limit"]


def test_details_sent_back_reach_the_upstream_unchanged(live: Live) -> None:
    turn = {**_message("leaky"), "reasoning_details": _details("leaky")}
    history: Any = [*ASK, turn, {"role": "user", "content": "and then?"}]
    with live.client("plain") as client:
        client.chat.completions.create(model="leaky", messages=history)
    assert live.bodies[-1]["messages"][1]["reasoning_details"] == _details("leaky")


@pytest.mark.parametrize(
    ("details", "param"),
    [
        ([{"type": "reasoning.text", "text": "x"}] * 10_001, "messages"),  # past the request's content parts
        ([{"type": "reasoning.text", "signature": "s" * 65_537}], "messages.1.reasoning_details.0.signature"),
        ([{"type": ["reasoning.text"]}], "messages.1.reasoning_details.0.type"),
        ({"type": "reasoning.text"}, "messages.1.reasoning_details"),
    ],
)
def test_hostile_details_are_a_400_naming_the_field(live: Live, details: Any, param: str) -> None:
    sent = len(live.bodies)
    history: Any = [*ASK, {"role": "assistant", "content": "ok", "reasoning_details": details}]
    with live.client("plain") as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="leaky", messages=history)
    assert caught.value.param == param, caught.value.body
    assert len(live.bodies) == sent  # nothing went upstream
    refused = caught.value.response.headers["x-request-id"]
    with live.client("plain") as client:  # a request after it: its row is written, the refused one's never was
        raw = client.chat.completions.with_raw_response.create(model="leaky", messages=ASK)
    wait_ledger_row(Path(live.gw.db), live.gw.url, raw.headers["x-request-id"])
    assert ledger_rows(Path(live.gw.db), refused) == 0
