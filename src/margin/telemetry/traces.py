"""OpenTelemetry traces of requests, with the GenAI semantic conventions, exported over OTLP/HTTP.

Only when `telemetry.otlp_endpoint` is set, and only with the `otel` extra installed (imported lazily, so a
gateway without it never loads OpenTelemetry). The request path does one thing: `record(row, trace)` appends
the finished ledger row and the caller's trace context to a bounded queue (a full queue drops the row's span
and counts it). A thread turns rows into spans after the fact (the span keeps the request's own start and end
times) and hands them to the SDK's BatchSpanProcessor, which exports in batches from its own thread. Nothing
here can slow or fail the ledger.

One span per request, kind CLIENT (margin calls the model), named `{operation} {model}` as the conventions
ask, with `gen_ai.*` attributes (operation, provider, request/response model, token usage, time to first
chunk), `error.type` for failures, and margin's own numbers under `margin.*` (cost, energy, carbon, status).

Incoming W3C trace context is joined: a request whose `traceparent` header is valid gets a span in the
caller's trace, child of the caller's span (its `tracestate` carried along), and the caller's sampled flag
is honoured (the SDK's default parent-based sampler: a caller that did not sample gets no span). The request
path only looks the headers up and bounds their length (`margin.types.TraceContext`: a `traceparent` over
128 characters is ignored, a `tracestate` over 512 dropped); this thread parses them with OpenTelemetry's
W3C propagator, and anything it cannot parse starts a new trace, as a request without the header does.
The context is not forwarded to upstreams: margin's span exists only after the request ended, so an
upstream could only be told the caller's span as its parent, not margin's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from margin.config import TelemetryConfig
from margin.errors import ConfigError
from margin.types import TraceContext

if TYPE_CHECKING:
    from opentelemetry.context import Context

log = logging.getLogger("margin.telemetry")

OPERATIONS = {
    "chat.completions": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "responses": "chat",  # OpenAI's Responses API: answered by a chat (GenAI names its operation `chat`)
    "messages": "chat",  # Anthropic's Messages API: idem
}
PROVIDERS = {"llamacpp": "llama.cpp", "fake": "margin.fake", "sentence_transformers": "sentence_transformers"}
DRAIN_INTERVAL_S = 0.5


def provider_names(backends: Mapping[str, Any]) -> dict[str, str]:
    """`gen_ai.provider.name` per backend: an openai-kind backend's `provider` (default `openai`), else its kind."""
    names = {}
    for name, config in backends.items():
        if config.kind == "openai":
            names[name] = getattr(config, "provider", None) or "openai"
        else:
            names[name] = PROVIDERS.get(config.kind, config.kind)
    return names


def _headers(env: str | None) -> dict[str, str]:
    """`key=value,key2=value2` from the environment variable `env` (the collector's credentials)."""
    text = os.environ.get(env, "") if env else ""
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {key.strip(): value.strip() for key, value in pairs}


def _ns(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000_000)


def _span_name(row: Mapping[str, Any]) -> str:
    """GenAI's `{operation} {model}` with the model the gateway routed to, one of the config's; a request not
    routed (an unknown model, refused before routing) is named by its operation alone, so a caller's choice of
    model name never becomes a span name (the tracing backend's cardinality); it stays in `gen_ai.request.model`."""
    operation = OPERATIONS.get(row["endpoint"], row["endpoint"])
    return f"{operation} {row['model']}" if row["model"] else operation


def attributes(row: Mapping[str, Any], provider: str | None) -> dict[str, Any]:
    """A span's attributes from a ledger row (None values left out: OpenTelemetry refuses them)."""
    failed = row["http_status"] >= 400
    values: dict[str, Any] = {
        "gen_ai.operation.name": OPERATIONS.get(row["endpoint"], row["endpoint"]),
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": row["requested_model"],
        "gen_ai.response.model": row["model"],
        "gen_ai.request.stream": row["stream"],
        "gen_ai.usage.input_tokens": row["input_tokens"],
        "gen_ai.usage.output_tokens": row["output_tokens"],
        "gen_ai.usage.cache_read.input_tokens": row["cached_tokens"] or None,
        "gen_ai.response.time_to_first_chunk": None if row["ttft_ms"] is None else row["ttft_ms"] / 1000,
        "error.type": (row["error_code"] or str(row["http_status"])) if failed else None,
        "http.response.status_code": row["http_status"],
        "margin.request_id": row["request_id"],
        "margin.status": row["status"],
        "margin.backend": row["backend"],
        "margin.team": row["team"],
        "margin.cost_nanousd": row["cost_nanousd"],
        "margin.energy_j": row["energy_j"],
        "margin.co2e_g": row["co2e_g"],
        "margin.overhead_ms": row["overhead_ms"],
        "margin.cache": row["cache"],
    }
    return {key: value for key, value in values.items() if value is not None}


class Traces:
    def __init__(
        self, config: TelemetryConfig, providers: Mapping[str, str], on_drop: Callable[[int], None] | None = None
    ) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise ConfigError(
                "telemetry.otlp_endpoint is set but OpenTelemetry is not installed: install margin with the "
                "`otel` extra (pip install 'margin[otel]')"
            ) from exc
        self._providers = providers
        self._on_drop = on_drop or (lambda count: None)
        self._max = config.trace_queue
        self._queue: deque[tuple[Mapping[str, Any], TraceContext | None]] = deque()
        self._propagator = TraceContextTextMapPropagator()
        self._wake = threading.Event()
        self._stopping = False
        exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint, headers=_headers(config.otlp_headers_env))
        self._provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}))
        batch = BatchSpanProcessor(
            exporter, max_queue_size=config.trace_queue, max_export_batch_size=min(512, config.trace_queue)
        )
        self._provider.add_span_processor(batch)
        self._tracer = self._provider.get_tracer("margin")
        self._thread = threading.Thread(target=self._run, name="margin-traces", daemon=True)
        self.exported = 0  # spans handed to the SDK (a caller's unsampled trace makes none)

    def start(self) -> None:
        self._thread.start()

    def record(self, row: Mapping[str, Any], trace: TraceContext | None = None) -> None:
        """On the request path: O(1), never blocks, never raises; `trace` is parsed later, by the thread."""
        if len(self._queue) >= self._max:
            self._on_drop(1)
            return
        self._queue.append((row, trace))

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(DRAIN_INTERVAL_S)
            self._drain()
        self._drain()

    def _drain(self) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        while self._queue:
            row, trace = self._queue.popleft()
            try:
                name = _span_name(row)
                start = _ns(row["created_at"])
                span = self._tracer.start_span(
                    name,
                    context=self._parent(trace),
                    kind=SpanKind.CLIENT,
                    attributes=attributes(row, self._providers.get(row["backend"] or "")),
                    start_time=start,
                )
                if row["http_status"] >= 400:
                    span.set_status(Status(StatusCode.ERROR, row["error_code"]))
                span.end(end_time=start + int(row["e2e_ms"] * 1_000_000))
                if span.get_span_context().trace_flags.sampled:
                    self.exported += 1
            except Exception:
                log.exception("could not turn request %s into a span", row.get("request_id"))
                self._on_drop(1)

    def _parent(self, trace: TraceContext | None) -> Context:
        """The caller's span as the parent (a remote span context), or an empty context (a new trace) when
        there is no `traceparent` or the W3C propagator finds it invalid."""
        from opentelemetry.context import Context

        if trace is None:
            return Context()
        carrier = {"traceparent": trace.traceparent}
        if trace.tracestate is not None:
            carrier["tracestate"] = trace.tracestate
        return self._propagator.extract(carrier, context=Context())

    def close(self) -> None:
        """Export what is queued and stop (blocking: run it off the event loop)."""
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(RuntimeError):  # never started
            self._thread.join(timeout=10)
        self._provider.shutdown()
