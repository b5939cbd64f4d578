"""The request path's guarantees: steps in the composed order, request and response sides in one frame, the
outermost step's row for every outcome (before the answer's last byte), answers that skip the backend, and
stream delivery (bursts joined into one write, nothing held back across a wait)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from margin.api.errors import error_body, status_of
from margin.errors import InvalidRequest, MarginError
from margin.parsing import parse_request
from margin.pipeline.flow import Flow
from margin.pipeline.steps.call import translate
from margin.pipeline.steps.settle import Settle
from margin.pipeline.stream import Delivery
from margin.pipeline.values import Next, Record, Reply, Request, RouteDecision
from margin.protocol import Endpoint
from margin.types import ANONYMOUS, Chunk, Completion, Usage
from tests.helpers import fake_settings, gateway


class Client:
    """Records what the flow writes, in order, with the rows the outbox held at each write."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.log: list[tuple[str, Any, int]] = []
        self.stopping = False  # the server is not stopping

    def status_of(self, error: MarginError) -> int:
        return status_of(error)

    def error_event(self, error: MarginError) -> bytes:
        return str(error_body(error)).encode()

    async def answer(self, body: bytes, headers: Mapping[str, str]) -> None:
        self.log.append(("answer", body, len(self.rows)))

    async def refuse(self, error: MarginError, headers: Mapping[str, str]) -> None:
        self.log.append(("refuse", status_of(error), len(self.rows)))

    async def start_stream(self, headers: Mapping[str, str]) -> None:
        self.log.append(("start", None, len(self.rows)))

    async def write(self, data: bytes) -> None:
        self.log.append(("write", data, len(self.rows)))

    async def end_stream(self, data: bytes) -> None:
        self.log.append(("end", data, len(self.rows)))


class Outbox:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.full = False

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)


class Recorder:
    def __init__(self, name: str, log: list[str], fail: bool = False, answer: bool = False) -> None:
        self.name, self.log, self.fail, self.answer = name, log, fail, answer

    async def __call__(self, request: Request, next: Next) -> Reply:
        self.log.append(f"{self.name}.request")
        outcome = "ok"
        try:
            if self.fail:
                raise InvalidRequest("no")
            if self.answer:
                return Reply(completion=Completion(payload={"cached": True}))
            return await next(request)
        except MarginError as error:
            outcome = error.code or "error"
            raise
        finally:
            self.log.append(f"{self.name}.response:{outcome}")


def make_request(client: Client, stream: bool = False, raw: dict[str, Any] | None = None) -> Request:
    raw = raw or {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": stream}
    body = parse_request(Endpoint.CHAT, raw)
    record = Record("r1", Endpoint.CHAT, "m", stream, principal=ANONYMOUS)
    return Request("r1", Endpoint.CHAT, {}, raw, body, ANONYMOUS, client, record, record.started)


def flow_of(outbox: Outbox, steps: list[Any], terminal: Next) -> Flow:
    def spawn(coroutine: Any) -> None:
        coroutine.close()

    return Flow([Settle(outbox, "hash", None, spawn), *steps], terminal)


async def test_steps_run_in_order_each_in_one_frame_and_the_row_precedes_the_answer() -> None:
    log: list[str] = []
    outbox = Outbox()

    async def terminal(request: Request) -> Reply:
        log.append("call")
        return Reply(completion=Completion(payload={"ok": True}))

    flow = flow_of(outbox, [Recorder("a", log), Recorder("b", log)], terminal)
    client = Client(outbox.rows)
    await flow(make_request(client))
    assert log == ["a.request", "b.request", "call", "b.response:ok", "a.response:ok"]
    assert client.log == [("answer", b'{"ok":true}', 1)]  # one row already in the outbox when the body left
    assert outbox.rows[0]["status"] == "ok" and outbox.rows[0]["http_status"] == 200


async def test_a_rejection_unwinds_every_entered_step_and_still_writes_a_row() -> None:
    log: list[str] = []
    outbox = Outbox()

    async def terminal(request: Request) -> Reply:
        raise AssertionError("the backend must not be called")

    flow = flow_of(outbox, [Recorder("a", log), Recorder("b", log, fail=True), Recorder("c", log)], terminal)
    client = Client(outbox.rows)
    await flow(make_request(client))
    assert log == ["a.request", "b.request", "b.response:invalid_request", "a.response:invalid_request"]
    assert client.log == [("refuse", 400, 1)]
    assert (outbox.rows[0]["status"], outbox.rows[0]["http_status"]) == ("error", 400)


async def test_a_step_can_answer_without_the_backend() -> None:
    log: list[str] = []
    outbox = Outbox()

    async def terminal(request: Request) -> Reply:
        raise AssertionError("the backend must not be called")

    flow = flow_of(outbox, [Recorder("cache", log, answer=True), Recorder("late", log)], terminal)
    client = Client(outbox.rows)
    await flow(make_request(client))
    assert log == ["cache.request", "cache.response:ok"] and client.log[0][0] == "answer"


async def test_an_unexpected_error_is_a_500_with_a_row() -> None:
    outbox = Outbox()

    async def terminal(request: Request) -> Reply:
        raise RuntimeError("bug")

    client = Client(outbox.rows)
    await flow_of(outbox, [], terminal)(make_request(client))
    assert client.log == [("refuse", 500, 1)]
    assert (outbox.rows[0]["http_status"], outbox.rows[0]["error_code"]) == (500, "internal_error")


def _content(text: str, more: bool) -> Chunk:
    payload = {"choices": [{"index": 0, "delta": {"content": text}}]}
    return Chunk(payload=payload, raw=b'{"c":"%s"}' % text.encode(), text=text, more=more)


USAGE = Chunk(payload={"choices": [], "usage": Usage(1, 2).to_openai()}, raw=b'{"u":1}', usage=Usage(1, 2), more=False)


async def _backend(log: list[str]) -> AsyncIterator[Chunk]:
    yield _content("b", more=True)
    yield USAGE  # the last event of this read
    log.append("waiting for the network")
    await asyncio.sleep(0.01)
    yield _content("c", more=True)
    yield _content("d", more=False)


async def _deliver(include_usage: bool) -> tuple[list[tuple[str, Any, int]], Delivery, list[str]]:
    raw: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    if include_usage:
        raw["stream_options"] = {"include_usage": True}
    waits: list[str] = []
    writes_before_wait: list[str] = []

    class Watch(Client):
        async def write(self, data: bytes) -> None:
            writes_before_wait.extend(["write"] if not waits else [])
            await super().write(data)

    watched = Watch([])
    delivery = Delivery(make_request(watched, stream=True, raw=raw))
    await delivery.run(_backend(waits), _content("a", more=True), lambda exc: InvalidRequest(str(exc)))
    assert writes_before_wait == ["write"]  # the first burst left before the stream waited for the network
    return watched.log, delivery, waits


async def test_a_burst_is_one_write_and_a_dropped_usage_event_still_releases_it() -> None:
    log, delivery, _ = await _deliver(include_usage=False)
    writes = [data for kind, data, _ in log if kind == "write"]
    assert writes == [b'data: {"c":"a"}\n\ndata: {"c":"b"}\n\n', b'data: {"c":"c"}\n\ndata: {"c":"d"}\n\n']
    assert delivery.usage == Usage(1, 2) and not delivery.usage_sent and delivery.parts == ["a", "b", "c", "d"]


async def test_the_usage_event_is_forwarded_when_asked_for() -> None:
    log, delivery, _ = await _deliver(include_usage=True)
    writes = [data for kind, data, _ in log if kind == "write"]
    assert writes[0] == b'data: {"c":"a"}\n\ndata: {"c":"b"}\n\ndata: {"u":1}\n\n'
    assert delivery.usage_sent


async def test_a_backend_failure_mid_stream_is_an_error_event() -> None:
    async def broken() -> AsyncIterator[Chunk]:
        yield _content("b", more=False)
        raise MarginError("cut", code="upstream_error")

    client = Client([])
    request = make_request(client, stream=True)
    delivery = Delivery(request)
    await delivery.run(broken(), _content("a", more=False), lambda exc: translate("b", exc))
    writes = [data for kind, data, _ in client.log if kind == "write"]
    assert writes[:2] == [b'data: {"c":"a"}\n\n', b'data: {"c":"b"}\n\n'] and b"upstream_error" in writes[2]
    assert delivery.failed is not None and delivery.failed.code == "upstream_error"


async def test_a_run_of_events_is_one_piece_once_the_first_token_is_known() -> None:
    """A run (`Chunk.events`) that holds the first token is taken event by event (TTFT, the first text); later
    runs are framed in one piece and parsed only when their text is asked for (an event in one that does not
    parse is forwarded as it came and has no text). A guard that rewrites events gets them one by one (and
    needs each to parse). What the client receives is the same bytes either way."""

    def event(text: str) -> bytes:
        return b'{"choices":[{"delta":{"content":"%s"}}]}' % text.encode()

    async def runs(odd: list[bytes]) -> AsyncIterator[Chunk]:
        yield Chunk(events=[event(""), event("a"), event("b")], more=True)
        yield Chunk(events=[event("c"), *odd, event("d")])

    for rewrite, odd in ((None, [b"{oops}"]), (lambda payload: False, [])):
        client = Client([])
        request = make_request(client, stream=True)._replace(rewrite=rewrite)
        delivery = Delivery(request)
        await delivery.run(runs(odd), Chunk(raw=event("")), lambda exc: translate("b", exc))
        sent = [event(text) for text in ("", "", "a", "b", "c")] + odd + [event("d")]
        assert b"".join(data for kind, data, _ in client.log if kind == "write") == b"".join(
            b"data: " + data + b"\n\n" for data in sent
        )
        assert request.record.ttft_s is not None and "".join(delivery.parts) == "abcd"
        assert delivery.failed is None


def test_a_route_decision_is_frozen() -> None:
    decision = RouteDecision(candidates=(), requested="m")
    with pytest.raises(AttributeError):
        decision.requested = "other"  # type: ignore[misc]


async def test_steps_the_config_does_not_use_are_not_in_the_list(db_path: Path) -> None:
    async with gateway(fake_settings(db_path)) as gw:
        assert gw.services.flow.names == ["Settle", "Auth", "Route", "Admit", "Guard", "Cache"]
    async with gateway(fake_settings(db_path, cache={"enabled": False})) as gw:
        assert "Cache" not in gw.services.flow.names


async def test_health_and_ready(db_path: Path) -> None:
    async with gateway(fake_settings(db_path)) as gw:
        health = (await gw.http.get("/healthz")).json()
        assert health["status"] == "ok" and health["open_mode"] is True
        assert set(health["backends"]) == {"fake", "api"}
        assert (await gw.http.get("/readyz")).status_code == 200


async def _told(chunks: list[Chunk]) -> tuple[list[int], Delivery]:
    """`chunks` delivered with a cache hook: the events written before each time it was awaited."""
    client = Client([])
    told: list[int] = []

    async def unstorable() -> None:
        told.append(sum(kind == "write" for kind, _, _ in client.log))

    async def rest() -> AsyncIterator[Chunk]:
        for chunk in chunks[1:]:
            yield chunk

    delivery = Delivery(make_request(client, stream=True)._replace(unstorable=unstorable))
    await delivery.run(rest(), chunks[0], lambda exc: InvalidRequest(str(exc)))
    return told, delivery


async def test_a_stream_tells_the_cache_once_when_its_first_token_is_more_than_text() -> None:
    """`Request.unstorable` (a cache miss that owns a lease) is awaited once, before the first token's event is
    written, when that token is a tool call, reasoning or a refusal; never for a stream whose first token is
    text (a tool call after text is found at the stream's end, as before)."""

    def delta(**fields: Any) -> Chunk:  # its text given, as the backends give it
        return Chunk(payload={"choices": [{"index": 0, "delta": fields}]}, text=fields.get("content", ""))

    tool = {"tool_calls": [{"index": 0, "function": {"name": "lookup", "arguments": "{}"}}]}
    cases = [
        ([delta(role="assistant"), delta(**tool), delta(**tool)], [1]),  # the role is no token (written first)
        ([delta(reasoning_content="hmm"), delta(content="a")], [0]),
        ([delta(refusal="no")], [0]),
        ([delta(content="a"), delta(**tool)], []),
        ([delta(content="a"), delta(content="b")], []),
    ]
    for chunks, expected in cases:
        told, delivery = await _told(chunks)
        assert told == expected and not delivery.unstorable, chunks
