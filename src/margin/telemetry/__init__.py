"""Lossy observability, kept apart from the ledger: Prometheus metrics and OpenTelemetry traces.

`Telemetry.observe(row, trace)` is called once per request, from the settle side, with the finished ledger row
and the caller's trace context (`margin.types.TraceContext`: its raw `traceparent`/`tracestate`, or None).
Nothing here may fail or slow a request: errors are logged and counted as dropped telemetry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from margin import tasks
from margin.telemetry.metrics import Metrics
from margin.telemetry.traces import Traces
from margin.types import TraceContext

log = logging.getLogger("margin.telemetry")
REFRESH_S = 1.0


class Telemetry:
    def __init__(self, metrics: Metrics | None, traces: Traces | None = None) -> None:
        self.metrics = metrics
        self.traces = traces
        self._task: asyncio.Task[None] | None = None
        self._state: Callable[[], Mapping[str, Any]] | None = None

    def observe(self, row: Mapping[str, Any], trace: TraceContext | None = None) -> None:
        """One finished request (its ledger row), and the trace context its caller sent (traces join it)."""
        if self.metrics is not None:
            try:
                self.metrics.observe(row)
            except Exception:
                log.exception("metrics could not observe request %s", row.get("request_id"))
                self.metrics.drop("metrics")
        if self.traces is not None:
            self.traces.record(row, trace)

    def refused(self, code: str | None) -> None:
        """A refusal with no ledger row (`margin_rejections_total{reason=code}`): one tally increment."""
        if self.metrics is not None:
            self.metrics.refused(code)

    def start(self, state: Callable[[], Mapping[str, Any]]) -> None:
        """Refresh the gauges from `state()` every second (and at each scrape)."""
        self._state = state
        if self.traces is not None:
            self.traces.start()
        if self.metrics is not None:
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever(), name="metrics-refresh")

    def refresh(self) -> None:
        if self.metrics is not None and self._state is not None:
            try:
                self.metrics.refresh(self._state())
            except Exception:
                log.exception("metrics refresh failed")

    async def _refresh_forever(self) -> None:
        while True:
            self.refresh()
            await asyncio.sleep(REFRESH_S)

    async def close(self) -> None:
        await tasks.stop(self._task)
        self.refresh()  # the last requests' counts (with workers, into the shared files)
        if self.traces is not None:
            await asyncio.to_thread(self.traces.close)
