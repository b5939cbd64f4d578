"""An exact-cache hit tells the finish reason the upstream gave: an `openai` backend's answer cut at `max_tokens`
(`length`) is replayed as `length`, streamed and whole, through Chat Completions and Responses (`incomplete`).
Before, the backend never read it and every hit said `stop`: a client that continues a cut answer took the
replay for a whole one."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import openai
import pytest

from tests.helpers import recorded_gateway
from tests.servers import reply_events, reply_json

USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


def _answer(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    head = {"id": "up-1", "created": 0, "model": body["model"]}
    if not body.get("stream"):
        message = {"role": "assistant", "content": "one two three four"}
        choice = {"index": 0, "message": message, "finish_reason": "length"}
        reply_json(handler, 200, {**head, "object": "chat.completion", "choices": [choice], "usage": USAGE})
        return
    chunk = {**head, "object": "chat.completion.chunk"}
    words = [{**chunk, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in "abcd"]
    finish = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    reply_events(handler, [*words, finish, {**chunk, "choices": [], "usage": USAGE}])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[openai.OpenAI, list[Any]]]:
    with recorded_gateway(tmp_path_factory.mktemp("finish"), _answer) as (url, bodies):
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30)
        yield client, bodies
        client.close()


@pytest.mark.parametrize("stream", [False, True])
def test_a_hit_repeats_the_upstreams_finish_reason(gateway: tuple[openai.OpenAI, list[Any]], stream: bool) -> None:
    client, bodies = gateway
    messages = [{"role": "user", "content": f"stream={stream}"}]
    body: Any = {"model": "m", "temperature": 0, "max_tokens": 4, "messages": messages}
    seen, caches = [], []
    for _ in range(2):
        if stream:
            with client.chat.completions.with_streaming_response.create(**body, stream=True) as raw:
                finishes = [c.choices[0].finish_reason for c in raw.parse() if c.choices]
                seen.append([f for f in finishes if f is not None])
                caches.append(raw.headers.get("x-margin-cache"))
        else:
            reply = client.chat.completions.with_raw_response.create(**body)
            seen.append([reply.parse().choices[0].finish_reason])
            caches.append(reply.headers.get("x-margin-cache"))
    assert caches[1] == "hit-exact" and len([b for b in bodies if b["messages"] == body["messages"]]) == 1
    assert seen == [["length"], ["length"]]


def test_a_responses_hit_of_a_cut_answer_is_incomplete(gateway: tuple[openai.OpenAI, list[Any]]) -> None:
    client, _ = gateway
    answers = [client.responses.create(model="m", input="cut", temperature=0, max_output_tokens=4) for _ in range(2)]
    assert [(a.status, a.incomplete_details and a.incomplete_details.reason) for a in answers] == [
        ("incomplete", "max_output_tokens")
    ] * 2
