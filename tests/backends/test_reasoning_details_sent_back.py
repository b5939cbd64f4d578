"""An assistant message's `reasoning_details` (OpenRouter's, sent back in a tool loop), without a network: an
`openai` backend is sent them as they came (whether or not it takes thinking blocks); an `anthropic` backend,
which cannot take them, is sent none (its turns are built from what it knows)."""

from __future__ import annotations

from typing import Any

import orjson

from margin.backend_config import AnthropicBackendConfig, OpenAIBackendConfig
from margin.backends.anthropic import AnthropicBackend
from margin.backends.openai_compat import OpenAIBackend
from margin.parsing import parse_request
from margin.protocol import Endpoint
from margin.types import Call

DETAILS = [
    {"type": "reasoning.text", "text": "I should look it up.", "signature": "c2ln+/==", "format": "anthropic-claude-v1",
     "index": 0},
    {"type": "reasoning.encrypted", "data": "ZW5j", "id": "rs_1", "format": "openai-responses-v1", "index": 1},
    {"type": "reasoning.future", "note": {"kept": True}},
]  # fmt: skip
MESSAGES = [
    {"role": "user", "content": "weather in Paris?"},
    {"role": "assistant", "content": "let me look", "reasoning_details": DETAILS},
    {"role": "user", "content": "and now?"},
]


def _call() -> Call:
    data: dict[str, Any] = {"model": "m", "messages": MESSAGES, "max_tokens": 100}
    return Call(Endpoint.CHAT, parse_request(Endpoint.CHAT, data), data, "m", "upstream-model", "r1")


def test_an_openai_backend_is_sent_the_details_as_they_came() -> None:
    for takes_blocks in (False, True):
        config = OpenAIBackendConfig(base_url="http://x/v1", thinking_blocks=takes_blocks)
        sent = orjson.loads(OpenAIBackend("up", config)._body(_call(), stream=False))
        assert sent["messages"][1]["reasoning_details"] == DETAILS


def test_an_anthropic_backend_is_sent_none() -> None:
    _, data = AnthropicBackend("claude", AnthropicBackendConfig())._request(_call(), stream=False)
    assert b"reasoning_details" not in data and b"c2ln" not in data and b"ZW5j" not in data
    assert orjson.loads(data)["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "let me look"}],
    }
