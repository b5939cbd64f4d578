"""A Responses stream's pieces (OpenRouter's `reasoning_details` texts, a call's arguments, a refusal) are joined
once, not concatenated piece by piece (`margin.responses_reasoning.DetailsMerge`, `margin.api.responses_out`):
100,000 deltas copy a bounded multiple of their characters, counted by a `str` whose `+` counts what it copies
(a `+=` on a string held in a dict copies the whole string so far, each time: quadratic, on the event loop)."""

from __future__ import annotations

from typing import Any

import orjson

from margin.api.responses_out import StreamEvents, skeleton
from margin.responses import parse_responses
from margin.responses_reasoning import MAX_ENCRYPTED_CHARS, decode_details

BODY = parse_responses({"model": "m", "input": "x"})
PIECES = 100_000


def _counted(limit: int) -> type[str]:
    """A `str` whose concatenations count the characters they copy, failing past `limit` (so the quadratic way
    fails fast rather than running for minutes)."""
    copied = [0]

    def count(chars: int) -> None:
        copied[0] += chars
        assert copied[0] <= limit, f"{copied[0]} characters copied by concatenation: more than {limit}"

    class Counted(str):
        __slots__ = ()

        def __add__(self, value: str, /) -> str:
            count(len(self) + len(value))
            return str.__add__(self, value)

        def __radd__(self, value: str, /) -> str:
            count(len(self) + len(value))
            return str.__add__(value, self)

    return Counted


def _delta(**delta: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def _final(out: bytes) -> dict[str, Any]:
    last = out.rsplit(b"\ndata: ", 1)[1]
    response: dict[str, Any] = orjson.loads(last)["response"]
    return response


def test_100k_reasoning_details_pieces_are_joined_once() -> None:
    counted = _counted(limit=4 * 2 * PIECES)
    events = StreamEvents(skeleton(BODY, "resp_1"), "1")
    events.start()
    for _ in range(PIECES):
        piece = {"type": "reasoning.text", "index": 0, "text": counted("ab"), "format": "f"}
        events.chunk(_delta(reasoning_content="ab", reasoning_details=[piece]))
    final = _final(events.end())
    item = final["output"][0]
    assert item["type"] == "reasoning" and item["content"][0]["text"] == "ab" * PIECES
    assert decode_details(item["encrypted_content"]) == [
        {"type": "reasoning.text", "index": 0, "text": "ab" * PIECES, "format": "f"}
    ]


def test_reasoning_details_past_what_an_encoding_holds_are_dropped_not_kept() -> None:
    events = StreamEvents(skeleton(BODY, "resp_1"), "1")
    events.start()
    piece = "x" * 65_536
    for _ in range(MAX_ENCRYPTED_CHARS // len(piece) + 1):
        events.chunk(_delta(reasoning_details=[{"type": "reasoning.text", "index": 0, "text": piece}]))
    assert events.details.dropped and events.details.entries() == []  # nothing held once it could not be sent back
    events.chunk(_delta(reasoning_details=[{"type": "reasoning.text", "index": 1, "text": "later"}]))
    assert events.details.entries() == []
    events.chunk(_delta(reasoning_content="r"))
    assert _final(events.end())["output"][0]["encrypted_content"] is None


def test_100k_argument_and_refusal_pieces_are_joined_once() -> None:
    counted = _counted(limit=4 * 2 * PIECES)
    events = StreamEvents(skeleton(BODY, "resp_1"), "1")
    events.start()
    first = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
    events.chunk(_delta(tool_calls=[first]))
    for _ in range(PIECES):
        events.chunk(_delta(tool_calls=[{"index": 0, "function": {"arguments": counted("[1")}}]))
    events.chunk(_delta(tool_calls=[{"index": 0, "function": {"arguments": "]" * PIECES}}]))
    for _ in range(PIECES):
        events.chunk(_delta(refusal=counted("no")))
    final = _final(events.end())
    call, refusal = final["output"]
    assert call["type"] == "function_call" and call["arguments"] == "[1" * PIECES + "]" * PIECES
    assert refusal["content"] == [{"type": "refusal", "refusal": "no" * PIECES}]


def test_a_failed_stream_s_open_call_has_its_arguments_so_far() -> None:
    events = StreamEvents(skeleton(BODY, "resp_1"), "1")
    events.start()
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":'}}
    events.chunk(_delta(tool_calls=[call]))
    events.chunk(_delta(tool_calls=[{"index": 0, "function": {"arguments": "1"}}]))
    events.fail({"code": "server_error", "message": "gone"})
    assert [item["arguments"] for item in events.response["output"]] == ['{"a":1']
