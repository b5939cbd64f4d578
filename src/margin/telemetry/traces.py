"""OpenTelemetry traces of requests, with the GenAI semantic conventions, exported over OTLP/HTTP.

Only when `telemetry.otlp_endpoint` is set, and only with the `otel` extra installed (imported lazily, so a
gateway without it never loads OpenTelemetry). The request path does one thing: `record(row)` appends the
finished ledger row to a bounded queue (a full queue drops the row's span and counts it). A thread turns rows
into spans after the fact (the span keeps the request's own start and end times) and hands them to the SDK's
BatchSpanProcessor, which exports in batches from its own thread. Nothing here can slow or fail the ledger.

One span per request, kind CLIENT (margin calls the model), named `{operation} {model}` as the conventions
ask, with `gen_ai.*` attributes (operation, provider, request/response model, token usage, time to first
chunk), `error.type` for failures, and margin's own numbers under `margin.*` (cost, energy, carbon, status).
Incoming trace context (`traceparent`) is not joined: each request starts its own trace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from margin.config import TelemetryConfig
from margin.errors import ConfigError

log = logging.getLogger("margin.telemetry")

OPERATIONS = {"chat.completions": "chat", "completions": "text_completion", "embeddings": "embeddings"}
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
        except ImportError as exc:
            raise ConfigError(
                "telemetry.otlp_endpoint is set but OpenTelemetry is not installed: install margin with the "
                "`otel` extra (pip install 'margin[otel]')"
            ) from exc
        self._providers = providers
        self._on_drop = on_drop or (lambda count: None)
        self._max = config.trace_queue
        self._queue: deque[Mapping[str, Any]] = deque()
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
        self.exported = 0  # spans handed to the SDK

    def start(self) -> None:
        self._thread.start()

    def record(self, row: Mapping[str, Any]) -> None:
        """On the request path: O(1), never blocks, never raises."""
        if len(self._queue) >= self._max:
            self._on_drop(1)
            return
        self._queue.append(row)

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(DRAIN_INTERVAL_S)
            self._drain()
        self._drain()

    def _drain(self) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        while self._queue:
            row = self._queue.popleft()
            try:
                name = f"{OPERATIONS.get(row['endpoint'], row['endpoint'])} {row['model'] or row['requested_model']}"
                start = _ns(row["created_at"])
                span = self._tracer.start_span(
                    name,
                    kind=SpanKind.CLIENT,
                    attributes=attributes(row, self._providers.get(row["backend"] or "")),
                    start_time=start,
                )
                if row["http_status"] >= 400:
                    span.set_status(Status(StatusCode.ERROR, row["error_code"]))
                span.end(end_time=start + int(row["e2e_ms"] * 1_000_000))
                self.exported += 1
            except Exception:
                log.exception("could not turn request %s into a span", row.get("request_id"))
                self._on_drop(1)

    def close(self) -> None:
        """Export what is queued and stop (blocking: run it off the event loop)."""
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(RuntimeError):  # never started
            self._thread.join(timeout=10)
        self._provider.shutdown()
