"""An owner whose answer the cache does not store (tool calls, reasoning): when its waiters are let go. One
`margin serve` with the default exact cache (the in-process lease), an upstream whose answers are tool calls or
reasoning, the official SDK as the client. A whole (not streamed) answer is known only once it has come: the
waiters go upstream right after it, each paying for its own call. A stream shows it with its first token: the
waiters go upstream then, while the owner's stream goes on. Before: they waited for the owner's whole stream,
then made their own calls (twice the call's time)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.cache.test_flight import COST, USAGE, Replicas, Upstream, burst, replicas
from tests.servers import reply_events, reply_json

SLOW_S = 2.5  # the upstream's time for one answer (a stream: from its first event to its last)
FIRST_S = 1.0  # a stream's first event: the waiters (0.2 s after its call reached the upstream) have claimed by then
TOOL_CALL = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}


@dataclass
class Unstorable(Upstream):
    """Answers with a tool call (`kind` tool) or with reasoning before its text (`kind` reasoning); a stream's
    first event comes `FIRST_S` after the request, the rest `slow_s` after it."""

    kind: str = "tool"

    def answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        with self.lock:
            self.arrived.append(time.monotonic())
        if body.get("stream"):
            reply_events(handler, self._events(body))
            return
        time.sleep(self.slow_s)
        self._ended()
        tool = self.kind == "tool"
        message: dict[str, Any] = {"role": "assistant", "content": None if tool else "the answer"}
        message |= {"tool_calls": [TOOL_CALL]} if tool else {"reasoning_content": "thinking it over"}
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if tool else "stop"}
        answer = {"id": "chatcmpl-u", "object": "chat.completion", "created": 1, "model": body["model"]}
        reply_json(handler, 200, answer | {"choices": [choice], "usage": USAGE})

    def _ended(self) -> None:
        with self.lock:
            self.answered.append(time.monotonic())

    def _events(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        head = {"id": "chatcmpl-u", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
        first = {"tool_calls": [TOOL_CALL]} if self.kind == "tool" else {"reasoning_content": "thinking it over"}
        time.sleep(FIRST_S)
        yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", **first}}]}
        time.sleep(self.slow_s)
        self._ended()
        if self.kind != "tool":
            yield {**head, "choices": [{"index": 0, "delta": {"content": "the answer"}}]}
        finish = "tool_calls" if self.kind == "tool" else "stop"
        yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
        yield {**head, "choices": [], "usage": USAGE}


def owner_then_waiters(gw: Replicas, question: str, owner_streams: bool) -> tuple[Any, list[tuple[Any, float]]]:
    """The owner's request, and 3 identical ones (one streamed) once its call has reached the upstream: the
    owner's answer, and each waiter's answer with its time (seconds from its start)."""

    def waiter(stream: bool) -> tuple[Any, float]:
        deadline = time.monotonic() + 30
        while not gw.upstream.arrived and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # it waits on the owner's lease (before the first event of a streamed owner)
        started = time.monotonic()
        return gw.ask(0, "a", question, stream=stream), time.monotonic() - started

    owner, *waiters = burst(
        [partial(gw.ask, 0, "a", question, stream=owner_streams)] + [partial(waiter, i == 0) for i in range(3)]
    )
    return owner, waiters


def check_paid_their_own(gw: Replicas, owner: Any, waiters: list[tuple[Any, float]]) -> None:
    """Each request went upstream and paid: the owner once, each waiter once; nothing served from the cache."""
    answers = [owner, *(answer for answer, _ in waiters)]
    assert [answer[:2] for answer in answers] == [(200, "miss")] * 4
    assert len(gw.upstream.bodies) == 4
    assert all(gw.row(answer[2]).cost_nanousd == COST for answer in answers)


def test_a_whole_answer_with_a_tool_call_lets_its_waiters_go_as_it_comes(tmp_path: Path) -> None:
    """Verified, unchanged: a whole answer is known only when it has come; the waiters go upstream within a
    moment of it, not at the end of the lease (the backend's `timeout_s`, 30 s here)."""
    upstream = Unstorable(slow_s=SLOW_S)
    with replicas(tmp_path, None, upstream, count=1) as gw:
        owner, waiters = owner_then_waiters(gw, f"a tool call {uuid.uuid4().hex}", owner_streams=False)
        check_paid_their_own(gw, owner, waiters)
        after = [arrived - upstream.answered[0] for arrived in upstream.arrived[1:]]
        assert all(0 < delay < 1.5 for delay in after), after  # after the owner's answer, within a moment
        assert all(SLOW_S < elapsed < 2 * SLOW_S + 3 for _, elapsed in waiters)  # what they wait: bounded


@pytest.mark.parametrize(("kind", "in_redis"), [("tool", False), ("reasoning", False), ("tool", True)])
def test_a_stream_that_opens_with_more_than_text_lets_its_waiters_go_at_once(
    tmp_path: Path, kind: str, in_redis: bool, request: pytest.FixtureRequest
) -> None:
    """The owner's first token (a tool call, reasoning) releases its lease, in this process or in Redis."""
    upstream = Unstorable(slow_s=SLOW_S, kind=kind)
    redis = request.getfixturevalue("redis_url") if in_redis else None
    with replicas(tmp_path, redis, upstream, count=1) as gw:
        owner, waiters = owner_then_waiters(gw, f"a {kind} stream {uuid.uuid4().hex}", owner_streams=True)
        check_paid_their_own(gw, owner, waiters)
        text = "" if kind == "tool" else "the answer"
        assert all(answer[3] in (text, None) for answer in [owner, *(a for a, _ in waiters)])
        elapsed = sorted(round(seconds, 2) for _, seconds in waiters)
        print(f"{kind}, in Redis: {in_redis}: the waiters' times {elapsed} s (one call: {SLOW_S} s)")
        assert max(upstream.arrived[1:]) < upstream.answered[0]  # they went while the owner's stream went on
        own = FIRST_S + SLOW_S  # a waiter's own call (streamed; not streamed: SLOW_S)
        assert all(seconds < own + FIRST_S + 1.0 for seconds in elapsed), elapsed  # before: the owner's, then theirs
