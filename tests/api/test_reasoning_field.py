"""Reasoning an OpenAI-compatible upstream puts in `message.reasoning` / `delta.reasoning` (OpenRouter, Ollama)
reaches clients as reasoning in `reasoning_content` (vLLM, DeepSeek) does, through a running `margin serve`
over real HTTP, the official openai and anthropic SDKs as clients (tests/api/compat_upstream.py answers with
no usage, so margin counts the output): a Responses client gets a reasoning item (a stream its
`response.reasoning_text.delta` events), a Messages client a thinking block (a stream its `thinking_delta`s),
and the row counts the same output tokens as for `reasoning_content`. An upstream that sends both keys with the
same text (recent vLLM) is read once: one reasoning item, one thinking block, the same count. Before: an
OpenRouter or Ollama answer's reasoning was dropped from Responses and Messages answers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from tests.api.compat_upstream import REASONING, compat_upstream
from tests.api.test_responses import _keys
from tests.helpers import margin_serve, wait_ledger_row

PRICE = {"input": "1", "output": "2"}
MODELS = ("vllm", "openrouter", "both")  # reasoning in `reasoning_content`, in `reasoning`, in both
UPSTREAM_MODEL = {"vllm": "reasoning", "openrouter": "openrouter", "both": "both"}
ASK: Any = [{"role": "user", "content": "hi"}]


@dataclass
class Live:
    url: str
    db: Path
    client: openai.OpenAI
    claude: anthropic.Anthropic

    def output_tokens(self, request_id: str) -> int:
        row = wait_ledger_row(self.db, self.url, request_id)
        assert row.http_status == 200
        return int(row.output_tokens)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("reasoning_field")
    key, _ = _keys(folder / "ledger.db")
    with compat_upstream() as upstream:
        backend = {"kind": "openai", "base_url": upstream.url, "retries": {"attempts": 0}}
        models = {name: {"backend": "up", "upstream_model": UPSTREAM_MODEL[name], "price": PRICE} for name in MODELS}
        config = {"storage": {"flush_interval_ms": 10}, "backends": {"up": backend}, "models": models}
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        serving = margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with (
            serving as (url, _process),
            openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client,
            anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as claude,
        ):
            yield Live(url, folder / "ledger.db", client, claude)


def _responses(live: Live, model: str) -> tuple[list[str], int]:
    raw = live.client.responses.with_raw_response.create(model=model, input=ASK, store=False)
    response = raw.parse()
    texts = [part.text for item in response.output if item.type == "reasoning" for part in item.content or []]
    assert response.output_text == "hello there"
    return texts, live.output_tokens(raw.headers["x-request-id"])


def _responses_stream(live: Live, model: str) -> tuple[list[str], int]:
    with live.client.responses.with_streaming_response.create(model=model, input=ASK, stream=True) as raw:
        request_id = raw.headers["x-request-id"]
        events = list(raw.parse())
    deltas = [event.delta for event in events if event.type == "response.reasoning_text.delta"]
    done = [event.item for event in events if event.type == "response.output_item.done"]
    assert [item.type for item in done] == ["reasoning", "message"]
    return ["".join(deltas)], live.output_tokens(request_id)


def _messages(live: Live, model: str) -> tuple[list[str], int]:
    raw = live.claude.messages.with_raw_response.create(model=model, max_tokens=100, messages=ASK)
    message = raw.parse()
    assert [block.type for block in message.content] == ["thinking", "text"]
    texts = [block.thinking for block in message.content if block.type == "thinking"]
    return texts, live.output_tokens(raw.headers["x-request-id"])


def _messages_stream(live: Live, model: str) -> tuple[list[str], int]:
    with live.claude.messages.with_streaming_response.create(
        model=model, max_tokens=100, messages=ASK, stream=True
    ) as raw:
        request_id = raw.headers["x-request-id"]
        events = list(raw.parse())
    starts = [event.content_block.type for event in events if event.type == "content_block_start"]
    assert starts == ["thinking", "text"]
    deltas = [event.delta.thinking for event in events if event.type == "content_block_delta"
              and event.delta.type == "thinking_delta"]  # fmt: skip
    return ["".join(deltas)], live.output_tokens(request_id)


@pytest.mark.parametrize("call", [_responses, _responses_stream, _messages, _messages_stream])
def test_reasoning_in_either_key_reaches_the_client_once_and_counts_the_same(live: Live, call: Any) -> None:
    seen = {model: call(live, model) for model in MODELS}
    # one item or block, the text once (not twice for `both`); the same output tokens in each row
    missed = [model for model, (texts, _tokens) in seen.items() if texts != [REASONING]]
    counts = {model: tokens for model, (_texts, tokens) in seen.items()}
    assert (missed, len(set(counts.values()))) == ([], 1), counts
    assert counts["vllm"] > 20  # the reasoning is counted (the answer's text is 2 words)
