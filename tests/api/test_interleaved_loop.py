"""An interleaved answer sent back through a running `margin serve`, over real HTTP: turn 1 of a tool loop is the
fake Anthropic upstream's `interleaved` answer (thinking, tool_use, thinking, text; tests/backends/
anthropic_upstream.py), and turn 2 sends it back with the tool's result, with thinking on. As Anthropic does with
interleaved thinking, that upstream refuses (400) the turn unless the assistant turn comes back whole, each block
in its place, signatures byte for byte. A chat client (the openai SDK, sending back `message.model_dump()`, whose
`block_order` says the order), a Responses client (sending back the output items) and a Messages client (sending
back the content blocks) each get turn 2 answered, and the upstream received the blocks in their order. Before:
the turn went back as thinking, thinking, text, tool_use, and turn 2 was the upstream's 400. A hostile
`block_order` is a 400 naming it: nothing sent upstream, no ledger row."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from tests.api.test_anthropic_backend import _key
from tests.backends.anthropic_upstream import INTERLEAVED, Upstream, anthropic_upstream
from tests.helpers import ledger_rows, margin_serve, wait_ledger_row

KEY_ENV = "MARGIN_TEST_INTERLEAVED_LOOP_KEY"
MODEL = "claude-interleaved"
ASK: Any = [{"role": "user", "content": "weather in Paris? then say hello"}]
SCHEMA: Any = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOL: Any = {"name": "get_weather", "input_schema": SCHEMA}
FUNCTION: Any = {"type": "function", "name": "get_weather", "parameters": SCHEMA}
CHAT_TOOL: Any = {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}
CALL_ID = INTERLEAVED[1]["id"]


@dataclass
class Live:
    url: str
    db: Path
    upstream: Upstream
    client: openai.OpenAI
    claude: anthropic.Anthropic


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("interleaved-loop")
    key = _key(folder / "ledger.db")
    with anthropic_upstream() as upstream, pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, "sk-ant-test")
        claude = {"kind": "anthropic", "base_url": upstream.url, "api_key_env": KEY_ENV, "timeout_s": 10}
        config = {"storage": {"flush_interval_ms": 10}, "backends": {"claude": claude},
                  "models": {MODEL: {"backend": "claude", "upstream_model": "interleaved",
                                     "price": {"input": "1", "output": "2"}}}}  # fmt: skip
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        serving = margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with (
            serving as (url, _process),
            openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client,
            anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as messages,
        ):
            yield Live(url, folder / "ledger.db", upstream, client, messages)


def _check_turn_2(live: Live, request_id: str) -> None:
    """What the upstream received in turn 2: the assistant turn whole, in its order; and the turn's ledger row."""
    turns = live.upstream.last["messages"]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == INTERLEAVED  # thinking, tool_use, thinking, text: each byte for byte
    assert turns[2]["content"][0]["tool_use_id"] == CALL_ID
    assert live.upstream.last["thinking"]["type"] == "enabled"  # the upstream checked the order (it refuses)
    row = wait_ledger_row(live.db, live.url, request_id)
    assert (row.http_status, row.backend, row.model) == (200, "claude", MODEL)


def _chat_turn_2(live: Live, turn_1: dict[str, Any]) -> tuple[Any, str]:
    asked: Any = [*ASK, turn_1, {"role": "tool", "tool_call_id": CALL_ID, "content": "sunny, 21 C"}]
    raw = live.client.chat.completions.with_raw_response.create(
        model=MODEL, messages=asked, tools=[CHAT_TOOL], reasoning_effort="low", max_tokens=4000
    )
    return raw.parse(), raw.headers["x-request-id"]


def test_a_chat_tool_loop_sends_an_interleaved_turn_back_in_its_order(live: Live) -> None:
    first = live.client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[CHAT_TOOL], reasoning_effort="low", max_tokens=4000
    )
    turn_1 = first.choices[0].message.model_dump()  # as a client sends it back: block_order, thinking_blocks too
    assert [entry["type"] for entry in turn_1["block_order"]] == ["thinking", "tool_use", "thinking", "text"]
    second, request_id = _chat_turn_2(live, turn_1)
    assert second.choices[0].message.content == "hello world"
    _check_turn_2(live, request_id)


def test_a_responses_tool_loop_sends_the_output_items_back_in_their_order(live: Live) -> None:
    fields: Any = {"model": MODEL, "tools": [FUNCTION], "store": False, "reasoning": {"effort": "low"},
                   "max_output_tokens": 4000}  # fmt: skip
    first = live.client.responses.create(input=ASK, **fields)
    items = [item.model_dump(exclude_none=True) for item in first.output]
    assert [item["type"] for item in items] == ["reasoning", "function_call", "reasoning", "message"]
    result: Any = {"type": "function_call_output", "call_id": CALL_ID, "output": "sunny, 21 C"}
    raw = live.client.responses.with_raw_response.create(input=[*ASK, *items, result], **fields)
    assert raw.parse().output_text == "hello world"
    _check_turn_2(live, raw.headers["x-request-id"])


def test_a_messages_tool_loop_sends_the_blocks_back_in_their_order(live: Live) -> None:
    fields: Any = {"model": MODEL, "max_tokens": 4096, "tools": [TOOL],
                   "thinking": {"type": "enabled", "budget_tokens": 2048}}  # fmt: skip
    first = live.claude.messages.create(messages=ASK, **fields)
    blocks = [block.model_dump(exclude_none=True) for block in first.content]
    assert [block["type"] for block in blocks] == ["thinking", "tool_use", "thinking", "text"]
    result = {"type": "tool_result", "tool_use_id": CALL_ID, "content": "sunny, 21 C"}
    answered: Any = [*ASK, {"role": "assistant", "content": blocks}, {"role": "user", "content": [result]}]
    raw = live.claude.messages.with_raw_response.create(messages=answered, **fields)
    assert [block.type for block in raw.parse().content][-1] == "text"
    _check_turn_2(live, raw.headers["x-request-id"])


HOSTILE = [
    ([{"type": "thinking"}] * 1025, "messages.1.block_order"),
    ([{"type": "text", "chars": "11"}], "messages.1.block_order.0.text.chars"),
    ([{"type": "thinking", "signature": "forged"}], "messages.1.block_order.0.thinking.signature"),
    ([{"type": "redacted_thinking"}], "messages.1.block_order.0"),
    ("thinking", "messages.1.block_order"),
]


@pytest.mark.parametrize(("order", "param"), HOSTILE)
def test_a_hostile_block_order_is_a_400_naming_it_with_nothing_sent_and_no_row(
    live: Live, order: Any, param: str
) -> None:
    sent = len(live.upstream.bodies)
    turn: Any = {"role": "assistant", "content": "x", "thinking_blocks": [INTERLEAVED[0]], "block_order": order}
    with pytest.raises(openai.BadRequestError) as caught:
        live.client.chat.completions.create(model=MODEL, messages=[*ASK, turn, *ASK])
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param, error
    assert len(live.upstream.bodies) == sent  # nothing reached the upstream
    later = live.client.chat.completions.with_raw_response.create(model=MODEL, messages=ASK)
    wait_ledger_row(live.db, live.url, later.headers["x-request-id"])  # written after the 400's would have been
    assert ledger_rows(live.db, caught.value.response.headers["x-request-id"]) == 0


def test_a_block_order_on_a_user_message_is_a_400(live: Live) -> None:
    sent = len(live.upstream.bodies)
    asked: Any = [{**ASK[0], "block_order": [{"type": "text", "chars": 32}]}]
    with pytest.raises(openai.BadRequestError) as caught:
        live.client.chat.completions.create(model=MODEL, messages=asked)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "messages.0.block_order"
    assert len(live.upstream.bodies) == sent
