"""A tool result that is an error (a Messages `tool_result` with `is_error: true`, Claude Code's failed command),
without a network: its chat tool message says so in its text (`Error: ...`) and in an `is_error` flag; an
`anthropic` backend is sent the flag and the text as it came, an `openai` backend the text alone (OpenAI's tool
messages have no such field: before, Anthropic got no flag, only the prefixed text)."""

from __future__ import annotations

from typing import Any

import orjson

from margin.backend_config import AnthropicBackendConfig, OpenAIBackendConfig
from margin.backends.anthropic import AnthropicBackend
from margin.backends.openai_compat import OpenAIBackend
from margin.messages import parse_messages
from margin.messages_chat import chat_data
from margin.parsing import parse_request
from margin.protocol import Endpoint
from margin.types import Call

USE = {"type": "tool_use", "id": "t1", "name": "ls", "input": {}}
CALL = {"id": "t1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}


def _call(text: str | None) -> Call:
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": "t1", "is_error": True}
    body = {
        "model": "m",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "list"},
            {"role": "assistant", "content": [USE]},
            {"role": "user", "content": [result if text is None else {**result, "content": text}]},
        ],
    }
    data = chat_data(parse_messages(body))
    return Call(Endpoint.CHAT, parse_request(Endpoint.CHAT, data, translated=True), data, "m", "up", "r1")


def test_an_anthropic_backend_is_sent_the_flag_and_the_text_as_it_came() -> None:
    for text, sent in (("exit 1", "exit 1"), ("Error: exit 1", "Error: exit 1"), ("", ""), (None, "")):
        _, data = AnthropicBackend("claude", AnthropicBackendConfig())._request(_call(text), stream=False)
        assert orjson.loads(data)["messages"][2]["content"] == [
            {"type": "tool_result", "tool_use_id": "t1", "content": sent, "is_error": True}
        ]


def test_an_openai_backend_is_sent_the_text_alone() -> None:
    for takes_blocks in (False, True):
        config = OpenAIBackendConfig(base_url="http://x/v1", thinking_blocks=takes_blocks)
        sent = orjson.loads(OpenAIBackend("up", config)._body(_call("exit 1"), stream=False))
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": "t1", "content": "Error: exit 1"}


def test_a_chat_client_s_flagged_text_is_sent_as_it_came() -> None:
    """A chat client's own `is_error` tool message (no Messages request made it): an anthropic backend is sent the
    flag and the text as it came, a leading `Error: ` included, and "Error" as "Error". Before, the prefix margin
    adds to a Messages `tool_result` was taken off any flagged text, the client's own words with it."""
    for text in ("Error: exit 1", "Error", "exit 1"):
        data = {
            "model": "m",
            "messages": [
                {"role": "user", "content": "list"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "t1", "content": text, "is_error": True},
            ],
        }
        call = Call(Endpoint.CHAT, parse_request(Endpoint.CHAT, data), data, "m", "up", "r1")
        _, sent = AnthropicBackend("claude", AnthropicBackendConfig())._request(call, stream=False)
        assert orjson.loads(sent)["messages"][2]["content"] == [
            {"type": "tool_result", "tool_use_id": "t1", "content": text, "is_error": True}
        ]
