"""A stream that ends with no finish reason and no `[DONE]` (an upstream cut off mid-answer, its body framed by the
connection's end alone) is not stored in the exact cache: a hit would replay the half answer as a complete one,
`finish_reason: stop`, to every caller of the same request. Before, it was stored and the next identical request
got it from the cache. Nor is it told as whole: the client gets the words, then an error event, as for a reset,
and its row is an upstream error (502, as for a reset mid-stream) with the tokens that were generated (before:
`[DONE]` and an `ok` row, the answer's end lost without a word). A whole stream is still stored.
`margin serve` over real HTTP, a fake upstream on a thread, the official openai SDK as the client."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import openai

from margin.ledger.models import ledger
from tests.helpers import ledger_columns, margin_serve, upstream_config
from tests.servers import http_thread, recording_handler


def _answer(handler: BaseHTTPRequestHandler, body: Any) -> None:
    """`cut`: three words, then the connection ends (no finish, no `[DONE]`, no length: HTTP/1.0's framing);
    `whole`: the same words, a finish and `[DONE]`; `failed`: the same, finishing with `error` (no error object)."""
    ending = body["messages"][0]["content"].rsplit(" ", 1)[-1]
    whole = ending != "cut"
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
    words = ("a ", "b ", "c")
    choices: list[Any] = [[{"index": 0, "delta": {"content": word}, "finish_reason": None}] for word in words]
    if whole:
        choices.append([{"index": 0, "delta": {}, "finish_reason": "error" if ending == "failed" else "stop"}])
    handler.send_response(200)
    handler.send_header("content-type", "text/event-stream")
    handler.end_headers()
    for sent in choices:
        handler.wfile.write(b"data: " + json.dumps({**chunk, "choices": sent}).encode() + b"\n\n")
    if whole:
        handler.wfile.write(b"data: [DONE]\n\n")
    handler.wfile.flush()
    handler.close_connection = True


def test_a_stream_cut_before_its_finish_is_not_stored_in_the_cache(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    bodies: list[Any] = []
    told: list[tuple[str | None, str, str | None]] = []  # the cache header, the text, the last finish reason
    with http_thread(recording_handler(bodies, _answer)) as upstream:
        path = upstream_config(tmp_path, url, upstream)
        with margin_serve(None, tmp_path / "serve.log", path) as (base, _):
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
            for ending in ("cut", "cut", "whole", "whole", "failed", "failed"):
                messages: Any = [{"role": "user", "content": f"tell me {ending}"}]
                with client.chat.completions.with_streaming_response.create(
                    model="m", messages=messages, temperature=0, stream=True
                ) as response:
                    chunks: list[Any] = []
                    try:
                        chunks.extend(response.parse())
                    except openai.APIError as exc:  # the cut: an error event after the words
                        assert "ended its stream before finishing" in exc.message
                        chunks.append(None)
                    got = [c for c in chunks if c is not None]
                    text = "".join(c.choices[0].delta.content or "" for c in got if c.choices)
                    finishes = [c.choices[0].finish_reason for c in got if c.choices and c.choices[0].finish_reason]
                    last = "cut" if chunks and chunks[-1] is None else (finishes[-1] if finishes else None)
                    told.append((response.headers.get("x-margin-cache"), text, last))
    assert told == [
        ("miss", "a b c", "cut"),  # before: no error, [DONE] after half an answer
        ("miss", "a b c", "cut"),  # before that: ("hit-exact", "a b c", "stop"), the cut answer replayed as whole
        ("miss", "a b c", "stop"),
        ("hit-exact", "a b c", "stop"),  # a whole stream is stored, as before
        ("miss", "a b c", "error"),
        ("miss", "a b c", "error"),  # before: a hit, the failed answer replayed to every caller for ttl_s
    ]
    assert len(bodies) == 5
    rows = ledger_columns(url, ledger.c.status, ledger.c.http_status, ledger.c.output_tokens)
    assert [row[:2] for row in rows[:2]] == [("upstream_error", 502)] * 2  # the cut: as a reset mid-stream
    assert all(row[2] > 0 for row in rows[:2])  # the words it generated are metered
    assert [row[:2] for row in rows[2:]] == [("ok", 200)] * 4
