"""Anthropic in, Anthropic out: the `anthropic` SDK calls margin's `POST /v1/messages` (Claude Code's way in),
and margin calls Anthropic's Messages API through a `kind: anthropic` backend (a fake Anthropic upstream over
real HTTP). What leaves margin is the client's conversation again, the client sees the upstream's answer and
usage (cache reads and writes apart), and the ledger row prices the writes at the cache-write rate."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
import yaml

from tests.api.test_anthropic_backend import KEY_ENV, UPSTREAM_KEY, _expected_nanousd, _key
from tests.backends.anthropic_upstream import INPUT, STOP_SEQUENCE, USAGE, Upstream, anthropic_upstream
from tests.helpers import margin_serve, wait_ledger_row

MODEL = "claude-haiku-4-5"
TOOL: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@dataclass
class Chain:
    url: str
    db: Path
    upstream: Upstream
    client: anthropic.Anthropic


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    folder = tmp_path_factory.mktemp("messages-to-anthropic")
    key = _key(folder / "ledger.db")
    with anthropic_upstream() as upstream, pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, UPSTREAM_KEY)
        backend = {"kind": "anthropic", "base_url": upstream.url, "api_key_env": KEY_ENV, "timeout_s": 10}
        config = {"storage": {"flush_interval_ms": 10}, "backends": {"claude": backend},
                  "models": {MODEL: {"backend": "claude"}}}  # fmt: skip
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        serving = margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with serving as (url, _process):
            client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
            try:
                yield Chain(url, folder / "ledger.db", upstream, client)
            finally:
                client.close()


def _check_usage(usage: Any) -> None:
    assert usage.input_tokens == USAGE["input_tokens"]  # Anthropic's meaning again: the prompt less the cache
    assert usage.cache_read_input_tokens == USAGE["cache_read_input_tokens"]
    assert usage.cache_creation_input_tokens == USAGE["cache_creation_input_tokens"]
    assert usage.output_tokens == USAGE["output_tokens"]


def _check_row(chain: Chain, request_id: str) -> None:
    row = wait_ledger_row(chain.db, chain.url, request_id)
    prompt = USAGE["input_tokens"] + USAGE["cache_read_input_tokens"] + USAGE["cache_creation_input_tokens"]
    assert (row.endpoint, row.backend, row.http_status) == ("messages", "claude", 200)
    assert (row.input_tokens, row.cached_tokens, row.output_tokens) == (prompt, 3000, USAGE["output_tokens"])
    assert row.cost_nanousd == _expected_nanousd(MODEL)  # the 1,000 writes at $1.25/M, not the input's $1


def test_a_message_goes_to_anthropic_and_comes_back_with_its_cache_usage(chain: Chain) -> None:
    raw = chain.client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=64,
        system=[{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "hi"}],
        metadata={"user_id": "u-7"},
    )
    message = raw.parse()
    assert [block.type for block in message.content] == ["text"] and message.content[0].text == "hello world"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    _check_usage(message.usage)
    assert chain.upstream.last == {
        "model": MODEL,
        "max_tokens": 64,
        "system": [{"type": "text", "text": "be brief"}],  # cache_control is not carried through the chat
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "metadata": {"user_id": "u-7"},
    }
    _check_row(chain, raw.headers["x-request-id"])


def test_a_stream_goes_to_anthropic_and_its_final_message_has_the_usage(chain: Chain) -> None:
    with chain.client.messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    assert text == "hello world" and final.stop_reason == "end_turn"
    _check_usage(final.usage)
    assert chain.upstream.last["stream"] is True
    _check_row(chain, request_id)


def test_the_stop_sequence_anthropic_stopped_at_comes_back_named(chain: Chain) -> None:
    """Anthropic's `stop_reason: stop_sequence` and the `stop_sequence` that matched reach the client again, whole
    and streamed (the SDK's final message). Before: `end_turn` and no sequence, the match lost in the chat."""
    asked: Any = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    stops = ["never", STOP_SEQUENCE]
    message = chain.client.messages.create(**asked, stop_sequences=stops)
    assert chain.upstream.last["stop_sequences"] == stops
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", STOP_SEQUENCE)
    assert message.content[0].text == "hello"
    with chain.client.messages.stream(**asked, stop_sequences=stops) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", STOP_SEQUENCE)
    plain = chain.client.messages.create(**asked, stop_sequences=["never"])
    assert (plain.stop_reason, plain.stop_sequence) == ("end_turn", None)


def test_a_tool_use_round_trip_through_both_translations(chain: Chain) -> None:
    asked: Any = [{"role": "user", "content": "weather in Paris?"}]
    first = chain.client.messages.create(model=MODEL, max_tokens=64, messages=asked, tools=[TOOL])
    assert first.stop_reason == "tool_use"
    (use,) = [block for block in first.content if block.type == "tool_use"]
    assert (use.name, use.input) == ("get_weather", INPUT)
    sent_tool = chain.upstream.last["tools"]
    assert sent_tool == [TOOL]
    answered = [
        *asked,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}]},
    ]
    second = chain.client.messages.create(model=MODEL, max_tokens=64, messages=answered, tools=[TOOL])
    assert second.stop_reason == "end_turn" and second.content[0].text == "hello world"  # type: ignore[union-attr]
    turns = chain.upstream.last["messages"]
    assert turns[1]["role"] == "assistant"
    assert [b for b in turns[1]["content"] if b["type"] == "tool_use"] == [
        {"type": "tool_use", "id": use.id, "name": "get_weather", "input": INPUT}
    ]
    assert turns[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}],
    }


def test_structured_outputs_and_strict_tools_pass_through_both_translations(chain: Chain) -> None:
    """`output_config.format` (Anthropic's structured outputs) and a strict tool reach Anthropic as sent."""
    schema: Any = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    output: Any = {"format": {"type": "json_schema", "schema": schema}}
    chain.client.messages.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "count"}], output_config=output
    )
    assert chain.upstream.last["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    strict: Any = {**TOOL, "strict": True}
    chain.client.messages.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}], tools=[strict]
    )
    assert chain.upstream.last["tools"] == [{**TOOL, "strict": True}]


@pytest.mark.parametrize(
    ("thinking", "sent"),
    [
        ({"type": "enabled", "budget_tokens": 10000}, {"type": "enabled", "budget_tokens": 10000}),
        ({"type": "enabled", "budget_tokens": 2000}, {"type": "enabled", "budget_tokens": 2000}),
        ({"type": "adaptive"}, {"type": "adaptive"}),
        ({"type": "disabled"}, None),
    ],
)
def test_a_thinking_config_reaches_anthropic_as_sent(chain: Chain, thinking: Any, sent: Any) -> None:
    """Before, `thinking` became a reasoning effort and the effort a budget of margin's: 10,000 reached Anthropic as
    8,192, 2,000 as 2,048, and `adaptive` as no thinking at all."""
    chain.client.messages.create(
        model=MODEL, max_tokens=20000, thinking=thinking, messages=[{"role": "user", "content": "hi"}]
    )
    assert chain.upstream.last.get("thinking") == sent
    assert "reasoning_effort" not in chain.upstream.last


@pytest.mark.parametrize(("content", "sent"), [("exit 1: no such file", "exit 1: no such file"), (None, "")])
def test_an_error_tool_result_reaches_anthropic_flagged_with_its_text_as_sent(
    chain: Chain, content: str | None, sent: str
) -> None:
    """Claude Code sends a failed command's result with `is_error: true`. Before, Anthropic got it unflagged, its
    text prefixed with `Error: ` (what an OpenAI-compatible upstream, which has no such flag, is still sent)."""
    result: Any = {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True}
    turns: Any = [
        {"role": "user", "content": "list the files"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [result if content is None else {**result, "content": content}]},
    ]
    chain.client.messages.create(model=MODEL, max_tokens=64, messages=turns, tools=[TOOL])
    assert chain.upstream.last["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": sent, "is_error": True}
    ]


def test_a_pdf_document_reaches_anthropic_as_a_document_block(chain: Chain) -> None:
    """Claude Code's Read of a PDF answers with a document block in the tool result: before, a 400."""
    pdf: Any = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}}
    turns: Any = [
        {"role": "user", "content": "read it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [pdf]}, pdf]},
    ]
    chain.client.messages.create(model=MODEL, max_tokens=64, messages=turns, tools=[TOOL])
    assert chain.upstream.last["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "document", "source": pdf["source"]}]},
        {"type": "document", "source": pdf["source"]},
    ]


PNG: Any = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
PDF: Any = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}


def test_a_tool_results_images_and_documents_stay_inside_it(chain: Chain) -> None:
    """Anthropic's Messages API takes images and documents inside a tool_result: they reach an anthropic backend
    there, each result's own, in order, and the user's own content after them. Before, they were moved out to
    the user content after the results (what an OpenAI-compatible upstream still gets: its tool messages hold
    text only)."""
    uses = [{"type": "tool_use", "id": f"toolu_{n}", "name": "get_weather", "input": {}} for n in (1, 2)]
    first: Any = [{"type": "text", "text": "a chart"}, {"type": "image", "source": PNG},
                  {"type": "document", "source": PDF, "title": "report.pdf"}]  # fmt: skip
    turns: Any = [
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": uses},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": first, "is_error": True},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "image", "source": PNG}]},
            {"type": "text", "text": "what do they show?"},
        ]},
    ]  # fmt: skip
    chain.client.messages.create(model=MODEL, max_tokens=64, messages=turns, tools=[TOOL])
    sent = chain.upstream.last["messages"]
    assert len(sent) == 3 and sent[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True, "content": [
            {"type": "text", "text": "a chart"}, {"type": "image", "source": PNG},
            {"type": "document", "source": PDF, "title": "report.pdf"},
        ]},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "image", "source": PNG}]},
        {"type": "text", "text": "what do they show?"},
    ]  # fmt: skip
    only: Any = [*turns[:2], {"role": "user", "content": turns[2]["content"][1:2]}]  # a result with only an image
    chain.client.messages.create(model=MODEL, max_tokens=64, messages=only, tools=[TOOL])
    assert chain.upstream.last["messages"][2]["content"] == [sent[2]["content"][1]]


def test_a_documents_title_and_context_reach_anthropic(chain: Chain) -> None:
    """A document block's `title` and `context` are passed on, a PDF's and a plain text one's (a document block
    again, not its text). Before, both were lost (and a text document arrived as a text block)."""
    notes = {"type": "text", "media_type": "text/plain", "data": "Q3 was flat."}
    content: Any = [
        {"type": "document", "source": PDF, "title": "Q3 report", "context": "from finance"},
        {"type": "document", "source": notes, "title": "notes", "context": "mine"},
        {"type": "document", "source": notes},
        {"type": "text", "text": "compare them"},
    ]
    chain.client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": content}])
    assert chain.upstream.last["messages"] == [{"role": "user", "content": [
        {"type": "document", "source": PDF, "title": "Q3 report", "context": "from finance"},
        {"type": "document", "source": notes, "title": "notes", "context": "mine"},
        {"type": "document", "source": notes},
        {"type": "text", "text": "compare them"},
    ]}]  # fmt: skip


def test_message_start_tells_the_upstreams_input_count(chain: Chain) -> None:
    """A stream's `message_start` has the usage Anthropic's own message_start gave (the input, cache reads and
    writes); before, zeros until `message_delta`."""
    with chain.client.messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        start = next(event for event in stream if event.type == "message_start")
        final = stream.get_final_message()
    usage = start.message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (
        USAGE["input_tokens"], USAGE["cache_read_input_tokens"], USAGE["cache_creation_input_tokens"]
    )  # fmt: skip
    _check_usage(final.usage)


def test_a_chat_client_of_an_anthropic_backend_never_sees_the_start_usage(chain: Chain) -> None:
    """The usage Anthropic's `message_start` told is carried beside the stream's chunks (for a Messages client's
    `message_start`, above), never in the chat JSON: a chat client's stream holds no `message_start_usage`. Before,
    its first chunk did."""
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {chain.client.api_key}"}
    with httpx.stream("POST", chain.url + "/v1/chat/completions", json=body, headers=headers, timeout=30) as answer:
        assert answer.status_code == 200
        raw = answer.read()
    assert b'"role":"assistant"' in raw and b"[DONE]" in raw  # the stream, first chunk and end included
    assert b"message_start_usage" not in raw
