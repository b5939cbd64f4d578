"""The fault matrix (issue 14 §5): a real `margin serve` in front of the fault upstream, one backend per case.

Every fault, JSON and streamed, with and without a fallback model, ends in one of: the fallback's answer
(status `fallback`), an answer after a retry on the same backend (`retried`), a clean OpenAI error, or, once
the stream had begun, an SSE error event followed by `[DONE]`. Nothing hangs: the client's own limit (15 s)
is far above the backends' (2 s total, 1 s to the first event, 0.5 s of silence). The ledger row says what
happened (status, error code, the backend that answered) and the upstream saw the tries the retry rules allow.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa
import yaml

from margin.ledger import db as ledger_db
from tests.faults.conftest import FaultUpstream
from tests.helpers import free_port, margin_serve, peak_rss
from tests.security.waiting import wait_for, watched

CHAT = "/v1/chat/completions"
LIMITS = {"connect_timeout_s": 1, "first_token_timeout_s": 1, "idle_timeout_s": 0.5, "timeout_s": 2}
RETRIES = {"attempts": 2, "backoff_s": 0.01, "backoff_max_s": 0.05, "retry_after_max_s": 1}
PRICE = {"input": "1", "output": "1"}
# a circuit stays open COOLDOWN_S (the window for the requests that must find it open), then lets one probe
# through, which `flip`'s upstream holds PROBE_S (the window for those that must find the probe in flight);
# under the cooldown, which also frees the place of a probe that never reports
COOLDOWN_S, PROBE_S = 4, 3


@dataclass(frozen=True)
class Expect:
    """The outcome without a fallback. `http`: what the client gets (200 for a retried answer, and for a stream
    that broke after it began); `code`: the error code (of the client's error, else of the fault that was got
    past); `row`: the ledger status; `tries`: requests the upstream saw; `row_http`: the row's http_status
    when it differs from the client's (a stream that broke records the error's status)."""

    http: int
    code: str
    row: str
    tries: int | None = 1
    mid_stream: bool = False
    row_http: int | None = None


@dataclass(frozen=True)
class Case:
    name: str
    mode: str | None  # the fault upstream's mode; None: a port nobody listens on (connection refused)
    json: Expect | None
    sse: Expect | None
    max_response_bytes: int | None = None  # the backend's answer limit, when the case needs a small one


def _both(expect: Expect) -> tuple[Expect, Expect]:
    return expect, expect


TOO_LARGE = Expect(502, "upstream_response_too_large", "upstream_error")
TOO_LARGE_MID_STREAM = Expect(200, "upstream_response_too_large", "upstream_error", mid_stream=True, row_http=502)
BOMB = 256 << 20  # the gzip bomb's size once decompressed (~260 KB on the wire)
FLOOD = 128 << 20  # a stream of ~1.9 million small events, no usage


CASES = [
    Case("500", "status,code=500", *_both(Expect(502, "upstream_error", "upstream_error"))),
    Case("503", "status,code=503", *_both(Expect(502, "upstream_error", "upstream_error", tries=3))),
    Case("503-once", "status,code=503,times=1", *_both(Expect(200, "upstream_error", "retried", tries=2))),
    Case("429", "status,code=429,after=30", *_both(Expect(429, "upstream_rate_limited", "upstream_rate_limited"))),
    Case("429-once", "status,code=429,after=0.05,times=1", *_both(Expect(200, "upstream_rate_limited", "retried", 2))),
    Case("refused", None, *_both(Expect(502, "upstream_unreachable", "upstream_error", tries=None))),
    Case("slow-first-byte", "slow,delay=10", *_both(Expect(504, "upstream_timeout", "upstream_timeout"))),
    Case("slow-first-event", "slowbody,delay=10", *_both(Expect(504, "upstream_timeout", "upstream_timeout"))),
    Case(
        "stall-mid-stream",
        "stall,events=2",
        Expect(504, "upstream_timeout", "upstream_timeout"),
        Expect(200, "upstream_timeout", "upstream_timeout", mid_stream=True, row_http=504),
    ),
    Case(
        "reset-mid-stream",
        "reset,events=2",
        Expect(502, "upstream_error", "upstream_error"),
        Expect(200, "upstream_error", "upstream_error", mid_stream=True, row_http=502),
    ),
    Case("malformed-json", "badjson", *_both(Expect(502, "upstream_bad_response", "upstream_error"))),
    Case("braced-garbage", "badbrace", *_both(Expect(502, "upstream_bad_response", "upstream_error"))),
    Case(
        "malformed-sse",
        "badsse,events=2",
        None,
        Expect(200, "upstream_bad_response", "upstream_error", mid_stream=True, row_http=502),
    ),
    # OpenRouter's mid-stream error (`error` beside `choices`): the OpenAI SDK raises on it; it is no answer
    Case("error-chunk-first", "errorchunk,events=0", None, Expect(502, "upstream_error", "upstream_error")),
    Case(
        "error-chunk-mid-stream",
        "errorchunk,events=2",
        None,
        Expect(200, "upstream_error", "upstream_error", mid_stream=True, row_http=502),
    ),
    Case("redirect", "redirect,code=307", *_both(Expect(502, "upstream_error", "upstream_error"))),  # not followed
    Case(
        "error-under-200",
        "errorbody",
        Expect(502, "upstream_error", "upstream_error"),
        Expect(502, "upstream_bad_response", "upstream_error"),  # a JSON body: a stream without events
    ),
    Case("no-events", "empty", None, Expect(502, "upstream_bad_response", "upstream_error")),
    # answers over the backend's size limit (1 MiB here): never held whole, ended where the limit is passed
    Case("too-large", f"huge,bytes={8 << 20}", TOO_LARGE, TOO_LARGE_MID_STREAM, 1 << 20),
    Case("too-large-declared", f"huge,bytes={8 << 20},declare=1", TOO_LARGE, None, 1 << 20),
    Case("gzip-bomb", f"huge,bytes={BOMB},gzip=1", TOO_LARGE, None, 1 << 20),
    Case("endless-line", f"huge,bytes={8 << 20},line=1", None, TOO_LARGE_MID_STREAM, 1 << 20),
]


def _backend(case: Case, stream: bool, fallback: bool) -> str:
    return f"f-{case.name}-{'sse' if stream else 'json'}{'-fb' if fallback else ''}"


def _config(upstream: FaultUpstream, dead_port: int) -> dict[str, Any]:
    backends: dict[str, Any] = {"good": {"kind": "openai", "base_url": upstream.base("ok", "good"), **LIMITS}}
    models: dict[str, Any] = {"good": {"backend": "good", "price": PRICE}}
    for case in CASES:
        for stream in (False, True):
            for fallback in (False, True):
                name = _backend(case, stream, fallback)
                base = upstream.base(case.mode, name) if case.mode else f"http://127.0.0.1:{dead_port}/v1"
                backends[name] = {"kind": "openai", "base_url": base, "retries": RETRIES, **LIMITS}
                if case.max_response_bytes is not None:  # the size limit is the test, not the time limit: 2 s
                    # was passed by a gzip bomb's decompression on a loaded machine (a 504 instead of the 502)
                    backends[name] |= {"max_response_bytes": case.max_response_bytes, "timeout_s": 30}
                models[name] = {"backend": name, "price": PRICE, "fallbacks": ["good"] if fallback else []}
    backends["cut"] = {"kind": "openai", "base_url": upstream.base("reset,events=2", "cut"), **LIMITS}
    models["cut"] = {"backend": "cut", "price": PRICE}
    flip = upstream.base("dyn", "flip")  # its probe is held PROBE_S: a total limit above that
    backends["flip"] = {"kind": "openai", "base_url": flip, "retries": RETRIES, **LIMITS, "timeout_s": 2 * PROBE_S}
    models["flip"] = {"backend": "flip", "price": PRICE, "fallbacks": ["good"]}
    flood = upstream.base(f"huge,bytes={FLOOD}", "flood")
    limits = {**LIMITS, "timeout_s": 120, "idle_timeout_s": 10, "max_response_bytes": 2 * FLOOD}
    backends["flood"] = {"kind": "openai", "base_url": flood, **limits}
    models["flood"] = {"backend": "flood", "price": PRICE}
    backends["odd429"] = {"kind": "openai", "base_url": upstream.base("dyn", "odd429"), **LIMITS}
    models["odd429"] = {"backend": "odd429", "price": PRICE}
    backends["odd"] = {"kind": "openai", "base_url": upstream.base("odd", "odd"), **LIMITS}
    models["odd"] = {"backend": "odd", "price": PRICE}
    big = upstream.base("many,events=3000,size=4000", "big")
    backends["big"] = {"kind": "openai", "base_url": big, **LIMITS, "timeout_s": 60}
    models["big"] = {"backend": "big", "price": PRICE}
    return {
        "server": {"stream_write_timeout_s": 2},
        "storage": {"flush_interval_ms": 10},
        "admission": {"breaker_failures": 2, "breaker_cooldown_s": COOLDOWN_S},
        "backends": backends,
        "models": models,
    }


@dataclass
class Gateway:
    url: str
    db: Path
    upstream: FaultUpstream
    pid: int

    def row(self, request_id: str) -> Any:
        found: list[Any] = []

        def landed() -> bool:
            engine = ledger_db.make_sync_engine(f"sqlite:///{self.db}")
            try:
                with engine.connect() as connection:
                    query = sa.text("SELECT * FROM ledger WHERE request_id = :id")
                    found[:] = list(connection.execute(query, {"id": request_id}))
            finally:
                engine.dispose()
            return bool(found)

        wait_for(landed, f"the ledger row of {request_id}")
        return found[0]


@pytest.fixture(scope="module")
def gw(fault_upstream: FaultUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("faults")
    config = tmp / "margin.yaml"
    config.write_text(yaml.safe_dump(_config(fault_upstream, free_port())))
    with margin_serve(tmp / "ledger.db", tmp / "serve.log", config=config, ready_s=60) as (url, process):
        yield Gateway(url, tmp / "ledger.db", fault_upstream, process.pid)


@dataclass
class Reply:
    status: int
    request_id: str | None
    error: dict[str, Any] | None  # the OpenAI error: the JSON body's, or the stream's error event
    texts: list[str]  # streamed content pieces before the end
    done: bool  # the stream ended with [DONE]
    headers: httpx.Headers


def send(url: str, model: str, stream: bool) -> Reply:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    with httpx.Client(base_url=url, timeout=15) as client, client.stream("POST", CHAT, json=body) as response:
        request_id = response.headers.get("x-margin-request-id")
        if response.status_code != 200 or not stream:
            data = json.loads(response.read())
            return Reply(response.status_code, request_id, data.get("error"), [], False, response.headers)
        error, texts, done = None, [], False
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            event = json.loads(line[6:])
            if "error" in event:
                error = event["error"]
            choices = event.get("choices")
            for choice in choices if isinstance(choices, list) else ():  # the odd shapes pass through too
                delta = choice.get("delta") if isinstance(choice, dict) else None
                texts.append((delta.get("content") if isinstance(delta, dict) else None) or "")
        return Reply(200, request_id, error, [t for t in texts if t], done, response.headers)


def _params() -> Iterator[Any]:
    for case in CASES:
        for stream, expect in ((False, case.json), (True, case.sse)):
            if expect is None:
                continue
            for fallback in (False, True):
                mode = f"{'sse' if stream else 'json'}{'+fallback' if fallback else ''}"
                yield pytest.param(case, stream, fallback, expect, id=f"{case.name}-{mode}")


@pytest.mark.parametrize(("case", "stream", "fallback", "expect"), list(_params()))
def test_fault(gw: Gateway, case: Case, stream: bool, fallback: bool, expect: Expect) -> None:
    name = _backend(case, stream, fallback)
    reply = send(gw.url, name, stream)
    assert reply.request_id is not None
    row = gw.row(reply.request_id)
    falls_back = fallback and expect.http != 200 and not expect.mid_stream
    if falls_back:  # the fault happened before any byte: the fallback answers, the row names the fault
        assert (reply.status, reply.error) == (200, None)
        assert (row.status, row.http_status, row.error_code, row.backend) == ("fallback", 200, expect.code, "good")
    else:
        assert reply.status == expect.http
        assert (row.status, row.http_status, row.error_code) == (
            expect.row,
            expect.row_http or expect.http,
            expect.code,
        )
        assert row.backend == name
    if expect.http == 200 and not expect.mid_stream:  # a retry got past the fault on the same backend
        assert reply.error is None and row.output_tokens == 3
    elif expect.mid_stream:  # the answer had begun: what was delivered, an error event, then [DONE]
        assert reply.texts == ["a", "b"] and reply.done
        assert reply.error is not None and reply.error["code"] == expect.code
        assert "SECRET" not in reply.error["message"]  # an upstream's error text stays in the log
        assert row.output_tokens > 0 and row.usage_source == "estimated"  # from the text that reached the client
    elif not falls_back:  # a clean OpenAI error before any byte
        assert reply.error is not None and set(reply.error) == {"message", "type", "param", "code"}
        assert reply.error["code"] == expect.code
        assert "scripted" not in reply.error["message"]  # the upstream's own text stays in the log
    if case.name == "429" and not fallback:
        assert reply.headers.get("retry-after") == "30"  # the upstream's Retry-After reaches the caller
    if expect.tries is not None and case.mode is not None:
        assert gw.upstream.count(case.mode, name) == expect.tries


def _circuit(gw: Gateway, backend: str) -> dict[str, Any]:
    body = httpx.get(f"{gw.url}/admin/backends", timeout=10).json()
    return next(entry["circuit"] for entry in body["data"] if entry["name"] == backend)


def test_breaker_opens_lets_one_probe_through_and_closes(gw: Gateway) -> None:
    """`flip` fails twice (500): its circuit opens and requests go straight to the fallback. After the cooldown
    it is healthy but slow: the first request reaches it (the probe), and three sent while the probe is in
    flight are answered by the fallback; the probe's success closes the circuit. (Timing: the request that
    finds the circuit open is sent right after it opened, its ledger rows read afterwards, so the cooldown is
    not spent waiting for rows. The three are sent once the upstream has the probe, which it holds PROBE_S:
    before, four were sent at once and the probe held 0.9 s, and one sent after the probe had closed the
    circuit, rightly served by `flip`, failed the test.)"""
    upstream = gw.upstream
    upstream.set_mode("flip", "status,code=500")
    failed = [send(gw.url, "flip", False) for _ in range(2)]
    circuit = _circuit(gw, "flip")
    skipped = send(gw.url, "flip", False)
    assert all(reply.status == 200 and gw.row(reply.request_id or "").status == "fallback" for reply in failed)
    assert (circuit["state"], circuit["consecutive_faults"]) == ("open", 2)
    assert circuit["recent_errors"][0]["code"] == "upstream_error" and circuit["recent_errors"][0]["fault"]
    row = gw.row(skipped.request_id or "")
    assert (row.status, row.error_code, row.backend) == ("fallback", "backend_unavailable", "good")
    assert upstream.count("dyn", "flip") == 2  # the open circuit kept the request away from it

    upstream.set_mode("flip", f"slow,delay={PROBE_S}")
    wait_for(lambda: _circuit(gw, "flip")["state"] == "half_open", "the circuit to half-open", timeout_s=30)
    with ThreadPoolExecutor(4) as pool:
        probe = pool.submit(send, gw.url, "flip", False)
        wait_for(lambda: upstream.count("dyn", "flip") == 3, "the probe to reach flip", timeout_s=PROBE_S)
        others = list(pool.map(lambda _: send(gw.url, "flip", False), range(3)))
        replies = [probe.result(), *others]
    rows = [gw.row(reply.request_id or "") for reply in replies]
    assert all(reply.status == 200 for reply in replies)
    assert [(row.status, row.backend) for row in rows] == [("ok", "flip")] + [("fallback", "good")] * 3
    assert upstream.count("dyn", "flip") == 3  # exactly one probe
    assert _circuit(gw, "flip")["state"] == "closed"
    after = gw.row(send(gw.url, "flip", False).request_id or "")
    assert (after.status, after.backend) == ("ok", "flip")


def test_streams_cut_mid_way_open_the_circuit(gw: Gateway) -> None:
    """A stream the upstream breaks after its first events is a backend fault: the client already had a 200,
    but the breaker counts it (and the delivered part is not mistaken for a success that closes it). The circuit
    is read right after the second cut, the rows afterwards: its cooldown is not spent waiting for the rows
    (with a 1 s cooldown, a slow ingest there made it read half-open)."""
    replies = [send(gw.url, "cut", True) for _ in range(2)]
    circuit = _circuit(gw, "cut")
    for reply in replies:
        assert reply.status == 200 and reply.error is not None and reply.done
        assert gw.row(reply.request_id or "").status == "upstream_error"
    assert (circuit["state"], circuit["consecutive_faults"]) == ("open", 2)


def test_answers_of_odd_shape_are_forwarded_and_metered(gw: Gateway) -> None:
    """`choices` that are not a list of objects (a number, a string, strings or nulls in the list): the
    answer is the upstream's and is forwarded as it came, and margin reads no text from the odd parts. The
    stream reports no usage, so its output is counted from the text it delivered ("a", "b"); the JSON answer's
    usage is the upstream's. Both rows are `ok` and priced."""
    reply = send(gw.url, "odd", False)
    assert reply.status == 200 and reply.error is None
    row = gw.row(reply.request_id or "")
    assert (row.status, row.output_tokens, row.usage_source) == ("ok", 3, "backend") and row.cost_nanousd > 0
    streamed = send(gw.url, "odd", True)
    assert (streamed.status, streamed.error, streamed.texts, streamed.done) == (200, None, ["a", "b"], True)
    row = gw.row(streamed.request_id or "")
    assert (row.status, row.output_tokens, row.usage_source) == ("ok", 1, "estimated") and row.cost_nanousd > 0


def test_a_retry_after_in_other_digits_is_not_passed_on(gw: Gateway) -> None:
    """`Retry-After: ٣` (Arabic-Indic three): `str.isdigit` says yes and `float` reads 3.0, but it is no HTTP
    delay and cannot be sent in a header. The client gets a clean 429 without Retry-After (it was a bare 500
    with a traceback in the log), and the gateway did not wait on it."""
    gw.upstream.set_mode("odd429", "status,code=429,after=\u0663")
    reply = send(gw.url, "odd429", False)
    assert (reply.status, (reply.error or {}).get("code")) == (429, "upstream_rate_limited")
    assert "retry-after" not in reply.headers
    assert gw.upstream.count("dyn", "odd429") == 1


def test_a_long_stream_without_usage_is_counted_off_the_event_loop(gw: Gateway) -> None:
    """128 MiB of small events and no usage: the output is counted from the delivered text, which means
    parsing every event. On the event loop that held `/readyz` for ~1.5 s; now it runs in a worker thread
    (~0.05 s of wait at most). The stream ends with neither a finish nor `[DONE]`: a cut, so the row is an
    upstream error, its output counted all the same."""
    body = {"model": "flood", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with (
        watched(gw.url) as waits,
        httpx.Client(base_url=gw.url, timeout=120) as client,
        client.stream("POST", CHAT, json=body) as response,
    ):
        received = sum(len(data) for data in response.iter_raw())
        request_id = response.headers["x-margin-request-id"]
    assert response.status_code == 200 and received > FLOOD * 0.9
    row = gw.row(request_id)
    assert (row.status, row.usage_source, row.output_tokens) == ("upstream_error", "estimated", 1)  # "a", "b"
    assert len(waits) > 5 and max(waits) < 0.75, max(waits)


def test_a_bomb_is_never_held_and_is_not_the_backends_fault(gw: Gateway) -> None:
    """Three gzip bombs, each 256 MiB once decompressed, against the backend's 1 MiB answer limit: each ends
    as a clean 502 while the gateway's memory, sampled every 2 ms, never grows by more than 64 MiB (held
    whole, one bomb is 256 MiB). An answer over the limit can be the request's doing (a long answer, many
    choices), so the circuit counts no fault (it opens after 2 here)."""
    name = _backend(next(case for case in CASES if case.name == "gzip-bomb"), False, False)
    with peak_rss(gw.pid) as sizes:
        replies = [send(gw.url, name, False) for _ in range(3)]
    baseline, peak = sizes
    assert [(reply.status, (reply.error or {}).get("code")) for reply in replies] == [
        (502, "upstream_response_too_large")
    ] * 3
    assert peak - baseline < 64 << 10, f"the gateway grew by {(peak - baseline) >> 10} MiB"
    circuit = _circuit(gw, name)
    assert (circuit["state"], circuit["faults"]) == ("closed", 0)


def _sip(sock: socket.socket, limit: int, window_s: float = 0.05) -> int:
    """Read what arrives within `window_s`, up to `limit` bytes."""
    sock.settimeout(window_s)
    got = 0
    try:
        while got < limit and (data := sock.recv(65536)):
            got += len(data)
    except TimeoutError:
        pass
    return got


def test_a_slow_reader_is_not_the_upstreams_fault(gw: Gateway) -> None:
    """A client reads a long stream in sips, 0.8 s apart, then stops. While its writes are blocked the
    gateway does not read the upstream, and that wait is not the upstream's silence: its idle limit (0.5 s)
    never runs out. The stream ends on the client's write timeout (2 s) as `client_closed`, and the backend's
    circuit counts no fault (else any caller could open a healthy backend's circuit by reading slowly)."""
    address = urlsplit(gw.url)
    body = json.dumps({"model": "big", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((address.hostname, address.port))
        head = f"POST {CHAT} HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(1024)
        request_id = re.search(rb"x-margin-request-id: (\w+)", received)
        assert received.startswith(b"HTTP/1.1 200") and request_id is not None
        sipped = 0
        for _ in range(5):
            time.sleep(0.8)
            sipped += _sip(sock, 1 << 20)
        assert sipped > 0
        row = gw.row(request_id.group(1).decode())  # then read nothing until the row is written
    assert (row.status, row.http_status, row.error_code) == ("client_closed", 499, "stream_write_timeout")
    circuit = _circuit(gw, "big")
    assert (circuit["state"], circuit["faults"]) == ("closed", 0)
