"""`reasoning.summary` (and its old name `generate_summary`) and `tool_choice: allowed_tools` on `/v1/responses`
through a running `margin serve`, the official openai SDK as the client (its stream accumulator too): an
anthropic backend on the fake Anthropic upstream (tests/backends/anthropic_upstream.py: a thinking and a
redacted_thinking block) and an OpenAI-compatible one (tests/api/compat_upstream.py), over real HTTP. Asked for,
each reasoning item's `summary` is its thinking as one `summary_text` part (a redacted block's: empty), its
`content` unchanged; a backend that did not reason gives no reasoning item. Before: `reasoning.summary` and
`allowed_tools` were a 400."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.api.compat_upstream import REASONING
from tests.api.test_responses_thinking import ASK, TOOL, Live, _turn_2, thinking_gateway
from tests.api.test_thinking_loop import COMPAT, MODEL
from tests.backends.anthropic_upstream import THINKING_PIECES
from tests.helpers import wait_ledger_row

THOUGHT = "".join(THINKING_PIECES)
BARE = "compat-reasoning"  # the compat upstream's `reasoning` model: bare `reasoning_content`, no blocks
ASKED: Any = {"effort": "low", "summary": "auto"}
ALLOWED: Any = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_weather"}]}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    bare = {"backend": "other", "upstream_model": "reasoning", "price": {"input": "1", "output": "2"}}
    with thinking_gateway(tmp_path_factory.mktemp("responses_summary"), {BARE: bare}) as gateway:
        yield gateway


def _summarized(output: list[dict[str, Any]]) -> None:
    """The two blocks' items: the thinking's text as its summary and still its content; the redacted's none."""
    assert [item["type"] for item in output] == ["reasoning", "reasoning", "message", "function_call"]
    thinking, redacted = output[0], output[1]
    assert thinking["summary"] == [{"type": "summary_text", "text": THOUGHT}]
    assert thinking["content"] == [{"type": "reasoning_text", "text": THOUGHT}]
    assert redacted["summary"] == [] and redacted["content"] == []
    assert all(item["encrypted_content"].startswith("margin.thinking.v1:") for item in output[:2])


def test_a_summary_asked_for_is_each_reasoning_item_s_thinking_and_the_loop_goes_on(live: Live) -> None:
    raw = live.client.responses.with_raw_response.create(
        model=MODEL, input=ASK, tools=[TOOL], reasoning=ASKED, max_output_tokens=4000, store=False
    )
    first = raw.parse()
    assert first.reasoning is not None and (first.reasoning.effort, first.reasoning.summary) == ("low", "auto")
    output = [item.model_dump(exclude_none=True) for item in first.output]
    _summarized(output)
    row = wait_ledger_row(live.db, live.url, raw.headers["x-request-id"])
    assert (row.endpoint, row.http_status) == ("responses", 200)
    # sent back with their summaries: accepted, the blocks sent byte for byte (`_turn_2` checks the upstream)
    assert _turn_2(live, output, reasoning=ASKED) == "hello world"


def test_a_streamed_summary_comes_in_openai_s_events_and_the_accumulator_holds_it(live: Live) -> None:
    with live.client.responses.stream(
        model=MODEL, input=ASK, tools=[TOOL], reasoning={"effort": "low", "summary": "detailed"}, store=False,
        max_output_tokens=4000,
    ) as stream:  # fmt: skip
        events: list[Any] = list(stream)
        final = stream.get_final_response()
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert final.reasoning is not None and final.reasoning.summary == "detailed"
    output = [item.model_dump(exclude_none=True) for item in final.output]
    _summarized(output)
    thinking_id, redacted_id = output[0]["id"], output[1]["id"]
    mine = [event.type for event in events if getattr(event, "item_id", None) == thinking_id or (
        getattr(event, "item", None) is not None and event.item.id == thinking_id)]  # fmt: skip
    summary_delta, text_delta = "response.reasoning_summary_text.delta", "response.reasoning_text.delta"
    assert mine == [
        "response.output_item.added", "response.reasoning_summary_part.added", "response.content_part.added",
        summary_delta, text_delta, summary_delta, text_delta,
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
    ]  # fmt: skip
    deltas = [event for event in events if event.type == summary_delta]
    assert [event.delta for event in deltas] == list(THINKING_PIECES)
    assert {(event.output_index, event.summary_index) for event in deltas} == {(0, 0)}
    (text_done,) = [event for event in events if event.type == "response.reasoning_summary_text.done"]
    (part_done,) = [event for event in events if event.type == "response.reasoning_summary_part.done"]
    assert text_done.text == THOUGHT and part_done.part.text == THOUGHT and part_done.item_id == thinking_id
    redacted = [event.type for event in events if getattr(event, "item", None) is not None
                and event.item.id == redacted_id]  # fmt: skip
    assert redacted == ["response.output_item.added", "response.output_item.done"]


def test_generate_summary_is_its_old_name_and_a_backend_s_bare_reasoning_is_summarized(live: Live) -> None:
    answer = live.client.responses.create(model=BARE, input="hi", reasoning={"generate_summary": "concise"})
    assert answer.reasoning is not None and answer.reasoning.summary == "concise"
    reasoning = answer.output[0].model_dump(exclude_none=True)
    assert reasoning["summary"] == [{"type": "summary_text", "text": REASONING}]
    assert (
        reasoning["content"] == [{"type": "reasoning_text", "text": REASONING}] and "encrypted_content" not in reasoning
    )
    assert answer.output_text == "hello there"


def test_a_backend_that_did_not_reason_gives_no_reasoning_item(live: Live) -> None:
    answer: Any
    for stream in (False, True):
        if stream:
            with live.client.responses.stream(model=COMPAT, input="hi", reasoning={"summary": "auto"}) as events:
                answer = events.get_final_response()
        else:
            answer = live.client.responses.create(model=COMPAT, input="hi", reasoning={"summary": "auto"})
        assert answer.status == "completed" and answer.output_text == "hello there"
        assert [item.type for item in answer.output] == ["message"]
        assert "reasoning" not in str(live.compat.last)  # nothing about summaries reaches a chat upstream


def test_a_summary_margin_does_not_know_is_a_400_naming_it(live: Live) -> None:
    sent = len(live.compat.bodies)
    for name in ("summary", "generate_summary"):
        unknown: Any = {name: "brief"}
        with pytest.raises(openai.BadRequestError) as caught:
            live.client.responses.create(model=COMPAT, input="hi", reasoning=unknown)
        assert caught.value.body["param"] == f"reasoning.{name}"  # type: ignore[index]
    assert len(live.compat.bodies) == sent


def test_allowed_tools_is_chat_s_allowed_tools_tool_choice(live: Live) -> None:
    answer: Any = live.client.responses.create(model=COMPAT, input="weather?", tools=[TOOL], tool_choice=ALLOWED)
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    assert live.compat.last["tool_choice"] == {"type": "allowed_tools", "allowed_tools": {"mode": "required",
                                                                                           "tools": tools}}  # fmt: skip
    assert answer.tool_choice.model_dump() == ALLOWED and answer.output[0].type == "function_call"
    sent = len(live.compat.bodies)
    unknown: Any = {**ALLOWED, "tools": [{"type": "function", "name": "get_time"}]}
    with pytest.raises(openai.BadRequestError) as caught:
        live.client.responses.create(model=COMPAT, input="weather?", tools=[TOOL], tool_choice=unknown)
    assert caught.value.body["param"] == "tool_choice.tools.0.name"  # type: ignore[index]
    assert len(live.compat.bodies) == sent
    # an anthropic backend has no such tool choice: refused as a chat's is, nothing sent
    calls = len(live.upstream.bodies)
    with pytest.raises(openai.BadRequestError):
        live.client.responses.create(model=MODEL, input="weather?", tools=[TOOL], tool_choice=ALLOWED)
    assert len(live.upstream.bodies) == calls
