"""Token counts on the real local model (`margin serve` with its default config, stored responses on: SmolLM2 on
llama.cpp), through the official SDKs: `POST /v1/messages/count_tokens` (anthropic's `messages.count_tokens`) and
`POST /v1/responses/input_tokens` (openai's `responses.input_tokens.count`) count exactly the input tokens a
completion of the same prompt reports (a system prompt, several turns, special-token text in a message; a stored
conversation continued with `previous_response_id`) on /v1/messages, /v1/responses and /v1/chat/completions.
What a completion refuses (tools: the backend takes none) a count refuses the same way; a prompt past the model's
context is counted, though a completion of it is refused. Before: both counts were refused (400
`count_tokens_unavailable`; /v1/responses/input_tokens a 405)."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.resources import files
from typing import Any

import anthropic
import openai
import pytest
import yaml

from tests.helpers import margin_serve

pytestmark = pytest.mark.integration

SYSTEM = "Answer briefly."
# several turns, one holding the chat template's own special-token text (counted as the characters it is)
TURNS: Any = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "And <|im_start|>system another one, in French?"},
]
TOOL: Any = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The default config (the real local model), with stored responses on."""
    folder = tmp_path_factory.mktemp("count-local")
    default = yaml.safe_load(files("margin").joinpath("default_config.yaml").read_text())
    config = {**default, "responses": {"store": True}}
    (folder / "margin.yaml").write_text(yaml.safe_dump(config))
    with margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml") as (base, _):
        yield base


def _anthropic(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="local", base_url=url, max_retries=0, timeout=120)


def _openai(url: str) -> openai.OpenAI:
    return openai.OpenAI(api_key="local", base_url=f"{url}/v1", max_retries=0, timeout=120)


def test_a_messages_count_is_the_input_a_completion_reports(url: str) -> None:
    with _anthropic(url) as client:
        counted = client.messages.count_tokens(model="local", system=SYSTEM, messages=TURNS).input_tokens
        message = client.messages.create(model="local", system=SYSTEM, messages=TURNS, max_tokens=1)
    # Anthropic's `input_tokens` leave out the input read from the prompt cache (llama.cpp reuses a prefix)
    assert counted == message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) > 20
    with _openai(url) as client:
        chat = client.chat.completions.create(
            model="local", messages=[{"role": "system", "content": SYSTEM}, *TURNS], max_tokens=1
        )
    assert chat.usage is not None and chat.usage.prompt_tokens == counted


def test_a_responses_count_is_the_input_a_response_reports(url: str) -> None:
    items: Any = [{"role": turn["role"], "content": turn["content"]} for turn in TURNS]
    with _openai(url) as client:
        raw = client.responses.input_tokens.with_raw_response.count(model="local", instructions=SYSTEM, input=items)
        response = client.responses.create(model="local", instructions=SYSTEM, input=items, max_output_tokens=16)
    counted = raw.parse()
    assert counted.object == "response.input_tokens" and raw.headers["x-request-id"]
    assert response.usage is not None and counted.input_tokens == response.usage.input_tokens > 20
    with _anthropic(url) as anthropic_client:  # the same prompt through the other API: the same count
        assert anthropic_client.messages.count_tokens(model="local", system=SYSTEM, messages=TURNS).input_tokens == (
            counted.input_tokens
        )


def test_a_continued_conversation_is_counted_with_its_stored_turns(url: str) -> None:
    with _openai(url) as client:
        first = client.responses.create(model="local", instructions=SYSTEM, input="Name a colour.", max_output_tokens=8)
        later = "And another one?"
        counted = client.responses.input_tokens.count(model="local", input=later, previous_response_id=first.id)
        second = client.responses.create(model="local", input=later, previous_response_id=first.id, max_output_tokens=1)
        alone = client.responses.input_tokens.count(model="local", input=later).input_tokens
    assert second.usage is not None and counted.input_tokens == second.usage.input_tokens > alone


def test_what_a_completion_refuses_a_count_refuses(url: str) -> None:
    with _openai(url) as client:
        with pytest.raises(openai.BadRequestError) as completion:
            client.responses.create(model="local", input="hi", tools=[TOOL], max_output_tokens=4)
        with pytest.raises(openai.BadRequestError) as count:
            client.responses.input_tokens.count(model="local", input="hi", tools=[TOOL])
    assert (count.value.code, count.value.param) == (completion.value.code, completion.value.param)
    assert (count.value.code, count.value.param) == ("unsupported_parameter", "tools")


def test_a_prompt_past_the_context_is_counted_though_a_completion_is_refused(url: str) -> None:
    long = "one two three four " * 1500  # 6,000 words: past the 4,096 tokens of the default config's context
    with _openai(url) as client:
        with pytest.raises(openai.BadRequestError) as completion:
            client.responses.create(model="local", input=long, max_output_tokens=4)
        counted = client.responses.input_tokens.count(model="local", input=long).input_tokens
    assert completion.value.code == "context_length_exceeded"
    assert f"prompt is too long: {counted} tokens > 4096 maximum" in completion.value.message and counted > 4096
