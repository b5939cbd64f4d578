"""An answer that holds more than its text, which a hit (one choice of text) cannot replay, is not stored: a search
model's citations (`annotations`) and OpenRouter's generated `images`, whole and streamed. Before, the second
identical request at temperature 0 was a hit that dropped them: the citations' links and the images were gone,
and the client took the bare text for the whole answer. A plain text answer is still stored and replayed."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import openai
import pytest

from tests.helpers import recorded_gateway
from tests.servers import reply_events, reply_json

FILLER = " and" * 256  # 1 kB of text an event
LONG_EVENTS = 300  # past PARSE_INLINE_BYTES (256 KiB) delivered: the stream's parts are read in a worker thread
USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
CITATION = {"url": "https://example.org/paris", "title": "Paris", "start_index": 0, "end_index": 5}
EXTRAS: dict[str, dict[str, Any]] = {
    "annotations": {"annotations": [{"type": "url_citation", "url_citation": CITATION}]},
    "images": {"images": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
    "plain": {},
}


def _answer(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    extra = EXTRAS[body["messages"][0]["content"].split()[0]]
    head = {"id": "up-1", "created": 0, "model": body["model"]}
    if not body.get("stream"):
        message = {"role": "assistant", "content": "Paris is the capital.", **extra}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        reply_json(handler, 200, {**head, "object": "chat.completion", "choices": [choice], "usage": USAGE})
        return
    chunk = {**head, "object": "chat.completion.chunk"}
    filler = [({"content": FILLER}, None)] * (LONG_EVENTS if "long" in body["messages"][0]["content"] else 0)
    deltas: list[tuple[dict[str, Any], str | None]] = [
        ({"role": "assistant", "content": "Paris is"}, None),
        *filler,  # a long stream: its extra part comes after 300 kB of text
        ({"content": " the capital.", **extra}, None),
        ({}, "stop"),
    ]
    events = [{**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": f}]} for d, f in deltas]
    events.append({**chunk, "choices": [], "usage": USAGE})
    reply_events(handler, events)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[openai.OpenAI, list[Any]]]:
    with recorded_gateway(tmp_path_factory.mktemp("unreplayed"), _answer) as (url, bodies):
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30)
        yield client, bodies
        client.close()


def _ask(client: openai.OpenAI, body: dict[str, Any], stream: bool, key: str) -> tuple[str | None, Any, str]:
    """(x-margin-cache, the extra part the answer carried, its text)."""
    if stream:
        with client.chat.completions.with_streaming_response.create(**body, stream=True) as raw:
            deltas = [c.choices[0].delta.model_dump() for c in raw.parse() if c.choices]
            found = [d[key] for d in deltas if d.get(key)]
            text = "".join(d["content"] or "" for d in deltas)
            return raw.headers.get("x-margin-cache"), found[0] if found else None, text
    reply = client.chat.completions.with_raw_response.create(**body)
    message = reply.parse().choices[0].message.model_dump()
    return reply.headers.get("x-margin-cache"), message.get(key) or None, message["content"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("key", ["annotations", "images"])
def test_an_answer_with_citations_or_images_is_not_replayed_without_them(
    gateway: tuple[openai.OpenAI, list[Any]], key: str, stream: bool
) -> None:
    client, bodies = gateway
    body: Any = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": f"{key} stream={stream}"}]}
    answers = [_ask(client, body, stream, key) for _ in range(2)]
    assert answers == [("miss", EXTRAS[key][key], "Paris is the capital.")] * 2  # before: the second a hit without them
    assert len([b for b in bodies if b["messages"] == body["messages"]]) == 2


@pytest.mark.parametrize("stream", [False, True])
def test_a_plain_text_answer_is_still_a_hit(gateway: tuple[openai.OpenAI, list[Any]], stream: bool) -> None:
    client, bodies = gateway
    body: Any = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": f"plain stream={stream}"}]}
    caches = [_ask(client, body, stream, "annotations")[0] for _ in range(2)]
    assert caches == ["miss", "hit-exact"]
    assert len([b for b in bodies if b["messages"] == body["messages"]]) == 1


@pytest.mark.parametrize("key", ["annotations", "plain"])
def test_a_long_stream_is_read_whole_for_an_unreplayable_part(
    gateway: tuple[openai.OpenAI, list[Any]], key: str
) -> None:
    """A stream past PARSE_INLINE_BYTES is looked at for such a part in a worker thread (test_stream_parse.py):
    one after 300 kB of text still keeps it from being stored; without one it is stored and replayed."""
    client, bodies = gateway
    body: Any = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": f"{key} long"}]}
    answers = [_ask(client, body, True, "annotations") for _ in range(2)]
    text = "Paris is" + FILLER * LONG_EVENTS + " the capital."
    if key == "annotations":
        assert answers == [("miss", EXTRAS[key][key], text)] * 2
        assert len([b for b in bodies if b["messages"] == body["messages"]]) == 2
    else:
        assert answers == [("miss", None, text), ("hit-exact", None, text)]
        assert len([b for b in bodies if b["messages"] == body["messages"]]) == 1
