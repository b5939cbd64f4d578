"""How an answer from an `anthropic` backend ends, end to end (a running `margin serve`, the fake Anthropic upstream
over real HTTP, the official SDKs as clients): an answer that stopped on a stop sequence says so again when the
exact cache replays it, and an upstream that is overloaded, before its stream or in the middle of it, reaches a
Messages client as Anthropic's `overloaded_error` and a chat or Responses client as a 502 `upstream_overloaded`,
the Responses stream's `response.failed` carrying the usage its ledger row bills. Before: a replay said
`end_turn` with no sequence; an overload was `api_error`; `response.failed` had `usage: null`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from tests.api.test_anthropic_backend import KEY_ENV, UPSTREAM_KEY, _key
from tests.backends.anthropic_upstream import STOP_SEQUENCE, Upstream, anthropic_upstream
from tests.helpers import margin_serve, wait_ledger_row

MODEL = "claude-haiku-4-5"
PRICE = {"input": "1", "output": "2"}
OVERLOADED = "upstream_overloaded"


@dataclass
class Live:
    url: str
    db: Path
    upstream: Upstream
    claude: anthropic.Anthropic
    client: openai.OpenAI

    def row(self, request_id: str) -> Any:
        return wait_ledger_row(self.db, self.url, request_id)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("anthropic-endings")
    key = _key(folder / "ledger.db")
    with anthropic_upstream() as upstream, pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, UPSTREAM_KEY)
        backend = {"kind": "anthropic", "base_url": upstream.url, "api_key_env": KEY_ENV, "timeout_s": 10,
                   "retries": {"attempts": 0}}  # fmt: skip
        models: dict[str, Any] = {MODEL: {"backend": "claude"}}
        models |= {
            name: {"backend": "claude", "upstream_model": name, "price": PRICE} for name in ("midstream", "overloaded")
        }
        config = {"storage": {"flush_interval_ms": 10}, "backends": {"claude": backend}, "models": models}
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        serving = margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with (
            serving as (url, _process),
            anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as claude,
            openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client,
        ):
            yield Live(url, folder / "ledger.db", upstream, claude, client)


def _asked(prompt: str) -> Any:
    return {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": prompt}],
            "stop_sequences": ["never", STOP_SEQUENCE], "extra_headers": {"x-margin-cache": "on"}}  # fmt: skip


def _whole(live: Live, asked: Any) -> tuple[Any, str]:
    raw = live.claude.messages.with_raw_response.create(**asked)
    return raw.parse(), raw.headers["x-margin-cache"]


def _streamed(live: Live, asked: Any) -> tuple[Any, str]:
    with live.claude.messages.stream(**asked) as stream:
        final = stream.get_final_message()
        return final, stream.response.headers["x-margin-cache"]


@pytest.mark.parametrize("first", [_whole, _streamed], ids=["stored-whole", "stored-streamed"])
def test_a_cache_replay_ends_on_the_stop_sequence_the_first_answer_ended_on(live: Live, first: Any) -> None:
    """The first answer (whole, or streamed) stopped on a stop sequence; its replays, whole and streamed, say
    `stop_sequence` and name it, as the first did, and nothing more reaches the upstream."""
    asked = _asked(f"stop early ({first.__name__})")
    message, cache = first(live, asked)
    assert cache == "miss" and (message.stop_reason, message.stop_sequence) == ("stop_sequence", STOP_SEQUENCE)
    sent = len(live.upstream.bodies)
    for replay in (_whole, _streamed):
        again, cache = replay(live, asked)
        assert cache == "hit-exact" and again.content[0].text == message.content[0].text
        assert (again.stop_reason, again.stop_sequence) == ("stop_sequence", STOP_SEQUENCE), replay.__name__
    assert len(live.upstream.bodies) == sent
    plain = {**asked, "stop_sequences": ["never"]}  # an answer that ended on its own is replayed as one
    _whole(live, plain)
    again, cache = _streamed(live, plain)
    assert cache == "hit-exact" and (again.stop_reason, again.stop_sequence) == ("end_turn", None)


def test_an_overload_mid_stream_reaches_a_messages_client_as_overloaded_error(live: Live) -> None:
    """Anthropic's `error` event of type `overloaded_error` after the stream started: the client's stream ends
    with an `error` event of that type (the SDK raises it, its body says so), not `api_error`."""
    text = ""
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        live.claude.messages.stream(
            model="midstream", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        request_id = stream.response.headers["x-request-id"]
        for piece in stream.text_stream:
            text += piece
    assert text == "hello world"
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == "overloaded_error" and "secret-host" not in error["message"]
    row = live.row(request_id)
    assert (row.status, row.http_status, row.error_code) == ("upstream_error", 502, OVERLOADED)


def test_an_overload_before_the_answer_is_overloaded_error_too(live: Live) -> None:
    """Anthropic's 529: a 502 as before (the ledger's and the chat client's), Anthropic's `overloaded_error` for a
    Messages client, OpenAI's `upstream_error` with the code `upstream_overloaded` for a chat client."""
    with pytest.raises(anthropic.InternalServerError) as caught:
        live.claude.messages.create(model="overloaded", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502 and caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(openai.APIStatusError) as chat:
        live.client.chat.completions.create(model="overloaded", messages=[{"role": "user", "content": "hi"}])
    assert (chat.value.status_code, chat.value.code, chat.value.type) == (502, OVERLOADED, "upstream_error")


def test_an_overload_mid_stream_is_upstream_overloaded_to_chat_and_responses_clients(live: Live) -> None:
    """The same overload, for the OpenAI SDK: the chat stream's error event and the Responses stream's `error`
    and `response.failed` say `upstream_overloaded`; `response.failed` has the usage the row bills."""
    raw = live.client.chat.completions.with_raw_response.create(
        model="midstream", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        list(raw.parse())
    assert caught.value.code == OVERLOADED
    with live.client.responses.with_streaming_response.create(model="midstream", input="hi", stream=True) as answer:
        request_id = answer.headers["x-request-id"]
        events: list[Any] = list(answer.parse())
    assert [event.type for event in events[-2:]] == ["error", "response.failed"]
    assert events[-2].code == OVERLOADED and events[-1].response.error.code == OVERLOADED
    usage, row = events[-1].response.usage, live.row(request_id)
    assert usage is not None and row.output_tokens > 0
    assert (usage.input_tokens, usage.output_tokens) == (row.input_tokens, row.output_tokens)
    assert usage.input_tokens_details.cached_tokens == row.cached_tokens
