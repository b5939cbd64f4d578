"""OpenTelemetry traces: a gateway configured with an OTLP endpoint exports one span per request, with the
GenAI semantic conventions, to a real OTLP/HTTP receiver; a caller's W3C trace context (`traceparent`,
`tracestate`) is joined, a malformed or over-long one ignored; without an endpoint OpenTelemetry is never
loaded; a full queue drops spans and counts them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, cast

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from margin.config import TelemetryConfig
from margin.telemetry.traces import Traces
from margin.types import TRACEPARENT_MAX, TRACESTATE_MAX, TraceContext
from tests.helpers import fake_settings, gateway
from tests.servers import http_thread
from tests.telemetry.test_metrics import row


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A minimal OTLP/HTTP trace receiver: decodes each export (protobuf) into spans as dicts."""
    spans: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_POST(self) -> None:
            export = ExportTraceServiceRequest()
            export.ParseFromString(self.rfile.read(int(self.headers["content-length"])))
            for resource in export.resource_spans:
                service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        attributes = {a.key: _value(a.value) for a in span.attributes}
                        spans.append(
                            {"name": span.name, "kind": span.kind, "service": service, "attributes": attributes,
                             "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
                             "error": span.status.code == 2, "trace_id": span.trace_id.hex(),
                             "span_id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
                             "trace_state": span.trace_state}
                        )  # fmt: skip
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

    with http_thread(Handler) as base:
        yield f"{base}/v1/traces", spans


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


async def test_requests_become_genai_spans(db_path: Path) -> None:
    with otlp_receiver() as (endpoint, spans):
        settings = fake_settings(db_path, telemetry={"otlp_endpoint": endpoint, "service_name": "gw-test"})
        async with gateway(settings) as gw:
            body = {"model": "fc", "messages": [{"role": "user", "content": "one two three"}]}
            assert (await gw.http.post("/v1/chat/completions", json=body)).status_code == 200
            assert (await gw.http.post("/v1/chat/completions", json={**body, "stream": True})).status_code == 200
            missing = await gw.http.post("/v1/chat/completions", json={**body, "model": "nope"})
            assert missing.status_code == 404
        # closing the gateway flushed the queue and the SDK's batch
    assert len(spans) == 3  # every request with a ledger row, refused ones included
    refused = next(span for span in spans if span["error"])
    # named by the operation alone: a caller's model name never becomes a span name
    assert refused["name"] == "chat" and refused["attributes"]["error.type"] == "model_not_found"
    assert refused["attributes"]["gen_ai.request.model"] == "nope"
    by_stream = {span["attributes"]["gen_ai.request.stream"]: span for span in spans if not span["error"]}
    whole = by_stream[False]
    assert whole["name"] == "chat fake-chat" and whole["kind"] == 3  # SPAN_KIND_CLIENT
    assert whole["service"] == "gw-test"
    attributes = whole["attributes"]
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "margin.fake"
    assert (attributes["gen_ai.request.model"], attributes["gen_ai.response.model"]) == ("fc", "fake-chat")
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (3, 5)
    assert attributes["margin.cost_nanousd"] > 0 and attributes["margin.status"] == "ok"
    assert whole["end"] >= whole["start"] and not whole["error"]
    assert "gen_ai.response.time_to_first_chunk" in by_stream[True]["attributes"]


def _traceparent(n: int, flags: str = "01", version: str = "00", extra: str = "") -> str:
    """A W3C traceparent whose trace id and parent span id are both `n` in hex."""
    return f"{version}-{n:032x}-{n:016x}-{flags}{extra}"


CALLS: dict[str, dict[str, str | bytes]] = {
    "joined": {"traceparent": _traceparent(1), "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"},
    # a later version may add fields: the propagator accepts them, so only margin's bound refuses `overlong`
    "future": {"traceparent": _traceparent(2, version="01", extra="-what-comes-next")},
    "overlong": {"traceparent": _traceparent(3, version="01", extra="-" + "x" * (TRACEPARENT_MAX - 55))},
    "long_state": {"traceparent": _traceparent(4), "tracestate": "a=" + "b" * TRACESTATE_MAX},
    "no_flags": {"traceparent": _traceparent(5)[:-3]},
    "zero_trace": {"traceparent": f"00-{0:032x}-{6:016x}-01"},
    "upper_hex": {"traceparent": _traceparent(0xABC).upper()},
    "version_ff": {"traceparent": _traceparent(8, version="ff")},
    "garbage": {"traceparent": "hello", "tracestate": "x=y"},
    "latin1": {"traceparent": _traceparent(9).encode()[:-2] + b"\xff\xfe"},
    "empty": {"traceparent": ""},
    "none": {},
    "unsampled": {"traceparent": _traceparent(10, flags="00")},
}
SENT = {f"{n:032x}" for n in (1, 2, 3, 4, 5, 6, 0xABC, 8, 9, 10)}


async def test_a_callers_trace_context_is_joined_and_hostile_ones_ignored(db_path: Path) -> None:
    ids: dict[str, str] = {}
    with otlp_receiver() as (endpoint, spans):
        async with gateway(fake_settings(db_path, telemetry={"otlp_endpoint": endpoint})) as gw:
            body = {"model": "fc", "messages": [{"role": "user", "content": "one two three"}]}
            for name, headers in CALLS.items():
                # httpx sends a str name with a bytes value as those bytes (`latin1`); its stubs want one or the other
                sent = cast("dict[str, str]", headers)
                answer = await gw.http.post("/v1/chat/completions", json=body, headers=sent)
                assert answer.status_code == 200, name  # a hostile header never fails a request
                ids[name] = answer.headers["x-margin-request-id"]
    by_call = {name: [s for s in spans if s["attributes"]["margin.request_id"] == rid] for name, rid in ids.items()}
    assert by_call.pop("unsampled") == []  # the caller did not sample its trace: margin's span is not kept
    assert all(len(found) == 1 for found in by_call.values()), by_call
    span = {name: found[0] for name, found in by_call.items()}
    for name, n in (("joined", 1), ("future", 2), ("long_state", 4)):
        assert (span[name]["trace_id"], span[name]["parent"]) == (f"{n:032x}", f"{n:016x}"), name
    assert span["joined"]["trace_state"] == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert span["long_state"]["trace_state"] == ""  # an over-long tracestate is dropped, the parent kept
    fresh = [name for name in span if name not in ("joined", "future", "long_state")]
    for name in fresh:  # each a new trace of its own: a root span, a trace id nobody sent
        assert span[name]["parent"] == "" and span[name]["trace_id"] not in SENT, name
        assert int(span[name]["trace_id"], 16) != 0 and span[name]["trace_state"] == "", name
    assert len({span[name]["trace_id"] for name in fresh}) == len(fresh)


def test_trace_context_is_only_length_checked_on_the_request_path() -> None:
    longest = "0" * TRACEPARENT_MAX
    assert TraceContext.of({"traceparent": longest}) == TraceContext(longest, None)  # parsed later, not here
    assert TraceContext.of({"traceparent": longest + "0", "tracestate": "a=b"}) is None
    assert TraceContext.of({"tracestate": "a=b"}) is None and TraceContext.of({"traceparent": ""}) is None
    state = "a=" + "b" * (TRACESTATE_MAX - 2)
    assert TraceContext.of({"traceparent": "tp", "tracestate": state}) == TraceContext("tp", state)
    assert TraceContext.of({"traceparent": "tp", "tracestate": state + "b"}) == TraceContext("tp", None)


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    dropped: list[int] = []
    config = TelemetryConfig(otlp_endpoint="http://127.0.0.1:9/v1/traces", trace_queue=3)
    traces = Traces(config, {}, dropped.append)  # not started: nothing drains the queue
    for i in range(5):
        traces.record(row(request_id=str(i)))
    assert sum(dropped) == 2
    traces.close()


def test_errors_are_marked_and_a_bad_row_is_counted_not_raised() -> None:
    with otlp_receiver() as (endpoint, spans):
        dropped: list[int] = []
        traces = Traces(TelemetryConfig(otlp_endpoint=endpoint), {"b": "openai"}, dropped.append)
        traces.start()
        traces.record(row(status="upstream_timeout", http_status=504, error_code="upstream_timeout"))
        traces.record({"request_id": "broken"})  # not a ledger row
        traces.close()
    assert sum(dropped) == 1
    (span,) = spans
    assert span["error"] and span["attributes"]["error.type"] == "upstream_timeout"
    assert span["attributes"]["gen_ai.provider.name"] == "openai"


def test_the_gateway_never_loads_opentelemetry_without_an_endpoint() -> None:
    probe = "import sys, margin.app; print(any(m.startswith('opentelemetry') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"
