"""Reasoning items on `/v1/responses` through a running `margin serve` whose `kind: anthropic` backend calls the
fake Anthropic upstream (tests/backends/anthropic_upstream.py) over real HTTP, the official openai SDK's
`client.responses.create` as the client. With thinking on (`reasoning.effort`), that upstream answers with a
thinking and a redacted_thinking block and refuses turn 2 (the tool result) unless the assistant turn starts
with those exact blocks: margin must give them as `reasoning` items (`encrypted_content`: margin's encoding)
and take them back from `input` (JSON, streamed, and through `previous_response_id`). A reasoning item from
another provider is left out, and an OpenAI-compatible upstream is sent no thinking. Before: a reasoning input
item was a 400 and answers held none, so turn 2 failed."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.api.compat_upstream import Upstream as CompatUpstream
from tests.api.compat_upstream import compat_upstream
from tests.api.test_anthropic_backend import KEY_ENV, UPSTREAM_KEY, _key
from tests.api.test_thinking_loop import COMPAT, MODEL, two_backends
from tests.backends.anthropic_upstream import THINKING_PIECES, THOUGHTS, USAGE, WEATHER, Upstream, anthropic_upstream
from tests.helpers import margin_serve, wait_ledger_row

TOOL: Any = {"type": "function", **WEATHER["function"]}
ASK: Any = [{"role": "user", "content": "weather in Paris?"}]


@dataclass
class Live:
    url: str
    db: Path
    upstream: Upstream
    compat: CompatUpstream
    client: openai.OpenAI


@contextmanager
def thinking_gateway(folder: Path, models: dict[str, Any] | None = None) -> Iterator[Live]:
    """`margin serve` with both backends and stored responses (`models`: more models, by name)."""
    key = _key(folder / "ledger.db")
    with anthropic_upstream() as upstream, compat_upstream() as compat, pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, UPSTREAM_KEY)
        config = two_backends(upstream.url, compat.url, responses={"store": True})
        config["models"].update(models or {})
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        serving = margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with serving as (url, _process):
            client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
            try:
                yield Live(url, folder / "ledger.db", upstream, compat, client)
            finally:
                client.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with thinking_gateway(tmp_path_factory.mktemp("responses_thinking")) as gateway:
        yield gateway


def _check_reasoning(output: list[dict[str, Any]]) -> None:
    """Turn 1's output: the two blocks as reasoning items first, then the message and the call."""
    assert [item["type"] for item in output] == ["reasoning", "reasoning", "message", "function_call"]
    thinking, redacted = output[0], output[1]
    assert thinking["content"] == [{"type": "reasoning_text", "text": "".join(THINKING_PIECES)}]
    assert thinking["summary"] == [] and redacted["content"] == [] and thinking["id"] != redacted["id"]
    assert all(item["encrypted_content"].startswith("margin.thinking.v1:") for item in output[:2])
    assert all(item["status"] == "completed" for item in output)


def _turn_2(live: Live, output: list[dict[str, Any]], stream: bool = False, **extra: Any) -> str:
    """Turn 2 of the tool loop, turn 1's output items sent back as they came: its text (the upstream's 400 is
    an openai.BadRequestError). Checks what the upstream got and the ledger row."""
    (call,) = [item for item in output if item["type"] == "function_call"]
    result = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny, 21 C"}
    fields: Any = {"model": MODEL, "input": [*ASK, *output, result], "tools": [TOOL], "store": False,
                   "reasoning": {"effort": "low"}, "max_output_tokens": 4000, **extra}  # fmt: skip
    if stream:
        with live.client.responses.with_streaming_response.create(**fields, stream=True) as raw:
            done = [event for event in raw.parse() if event.type == "response.completed"]
            text, request_id = done[0].response.output_text, raw.headers["x-request-id"]
    else:
        raw = live.client.responses.with_raw_response.create(**fields)
        text, request_id = raw.parse().output_text, raw.headers["x-request-id"]
    turns = live.upstream.last["messages"]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"][:2] == THOUGHTS  # exact: text, signature and data byte for byte
    assert [block["type"] for block in turns[1]["content"][2:]] == ["text", "tool_use"]
    row = wait_ledger_row(live.db, live.url, request_id)
    assert (row.http_status, row.backend, row.output_tokens) == (200, "claude", USAGE["output_tokens"])
    return str(text)


def test_a_responses_tool_loop_with_reasoning_sends_the_blocks_back(live: Live) -> None:
    first = live.client.responses.create(
        model=MODEL, input=ASK, tools=[TOOL], reasoning={"effort": "low"}, max_output_tokens=4000, store=False,
        include=["reasoning.encrypted_content"],
    )  # fmt: skip
    output = [item.model_dump(exclude_none=True) for item in first.output]
    _check_reasoning(output)
    assert first.output_text == "Let me look." and first.usage is not None
    assert _turn_2(live, output) == "hello world"


def test_a_streamed_responses_tool_loop_rebuilds_the_items_from_output_item_done(live: Live) -> None:
    stream = live.client.responses.create(
        model=MODEL, input=ASK, tools=[TOOL], reasoning={"effort": "low"}, max_output_tokens=4000, store=False,
        stream=True,
    )  # fmt: skip
    events = list(stream)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    done = {event.output_index: event.item.model_dump(exclude_none=True) for event in events
            if event.type == "response.output_item.done"}  # fmt: skip
    output = [done[index] for index in sorted(done)]
    _check_reasoning(output)
    added = [event.output_index for event in events if event.type == "response.output_item.added"]
    assert added == [0, 1, 2, 3]
    deltas = [event for event in events if event.type == "response.reasoning_text.delta"]
    assert [event.delta for event in deltas] == list(THINKING_PIECES)
    assert {(event.output_index, event.item_id) for event in deltas} == {(0, output[0]["id"])}
    (text_done,) = [event for event in events if event.type == "response.reasoning_text.done"]
    assert text_done.text == "".join(THINKING_PIECES)
    final = next(event for event in events if event.type == "response.completed").response
    assert [item.model_dump(exclude_none=True) for item in final.output] == output
    assert _turn_2(live, output, stream=True) == "hello world"


def test_previous_response_id_sends_the_stored_reasoning_back(live: Live) -> None:
    first = live.client.responses.create(
        model=MODEL, input=ASK, tools=[TOOL], reasoning={"effort": "low"}, max_output_tokens=4000, store=True
    )
    (call,) = [item for item in first.output if item.type == "function_call"]
    result: Any = [{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}]
    second = live.client.responses.create(
        model=MODEL, input=result, tools=[TOOL], reasoning={"effort": "low"}, max_output_tokens=4000,
        previous_response_id=first.id,
    )  # fmt: skip
    assert second.output_text == "hello world"
    turns = live.upstream.last["messages"]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"] and turns[1]["content"][:2] == THOUGHTS


def test_without_the_reasoning_items_turn_2_is_the_upstream_s_400(live: Live) -> None:
    first = live.client.responses.create(
        model=MODEL, input=ASK, tools=[TOOL], reasoning={"effort": "low"}, max_output_tokens=4000, store=False
    )
    output = [item.model_dump(exclude_none=True) for item in first.output if item.type != "reasoning"]
    with pytest.raises(openai.BadRequestError):
        _turn_2(live, output)


def test_metadata_is_the_response_s_own_not_sent_to_the_anthropic_backend(live: Live) -> None:
    """A Responses request's `metadata` is echoed and stored, and not translated to a chat's `metadata` (which
    an anthropic backend refuses). Before: a 400 naming `metadata`."""
    raw = live.client.responses.with_raw_response.create(model=MODEL, input="hi", metadata={"ticket": "42"})
    response = raw.parse()
    assert (response.status, response.output_text, response.metadata) == ("completed", "hello world", {"ticket": "42"})
    assert "metadata" not in live.upstream.last
    assert live.client.responses.retrieve(response.id).metadata == {"ticket": "42"}
    row = wait_ledger_row(live.db, live.url, raw.headers["x-request-id"])
    assert (row.endpoint, row.http_status, row.output_tokens) == ("responses", 200, USAGE["output_tokens"])


def test_a_reasoning_item_not_in_margin_s_encoding_is_left_out(live: Live) -> None:
    """Another provider's item (its own encrypted content), a forged one and one without any: accepted, never
    sent (the compat upstream gets the conversation without them); margin's own on that backend: no thinking."""
    forged = "margin.thinking.v1:" + base64.urlsafe_b64encode(b'{"type":"thinking","thinking":"x"}').decode()
    foreign: Any = [
        {"type": "reasoning", "id": "rs_openai", "summary": [{"type": "summary_text", "text": "hm"}],
         "encrypted_content": "gAAAAABoOpenAIsOwnOpaqueBytes=="},
        {"type": "reasoning", "id": "rs_forged", "summary": [], "encrypted_content": forged},
        {"type": "reasoning", "id": "rs_bare", "summary": []},
    ]  # fmt: skip
    mine = "margin.thinking.v1:" + base64.urlsafe_b64encode(b'{"type":"redacted_thinking","data":"abc"}').decode()
    own: Any = {"type": "reasoning", "id": "rs_own", "summary": [], "encrypted_content": mine}
    sent: Any = [
        *ASK,
        *foreign,
        own,
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "ok"},
    ]
    answer = live.client.responses.create(model=COMPAT, input=sent, store=False)
    assert answer.status == "completed"
    messages = live.compat.last["messages"]
    assert [message["role"] for message in messages] == ["user", "assistant", "user"]
    assert all("thinking_blocks" not in message and "reasoning" not in str(message) for message in messages)


def test_reasoning_items_are_bounded_as_thinking_blocks(live: Live) -> None:
    """At most 64 blocks on one assistant turn (protocol's bound on `thinking_blocks`): a 400, nothing sent."""
    mine = "margin.thinking.v1:" + base64.urlsafe_b64encode(b'{"type":"redacted_thinking","data":"abc"}').decode()
    own: Any = {"type": "reasoning", "summary": [], "encrypted_content": mine}
    sent: Any = [*ASK, *[own] * 65, {"role": "assistant", "content": "It is sunny."}, {"role": "user", "content": "ok"}]
    before = len(live.compat.bodies)
    with pytest.raises(openai.BadRequestError) as caught:
        live.client.responses.create(model=COMPAT, input=sent, store=False)
    assert "thinking_blocks" in str(caught.value.body) and len(live.compat.bodies) == before
    live.client.responses.create(model=COMPAT, input=[*ASK, *[own] * 64, *sent[-2:]], store=False)
    assert len(live.compat.bodies) == before + 1
