"""Prometheus metrics (prometheus-client), served at `GET /metrics`.

Per request, `observe(row)` reads the finished ledger row (one call, from the settle side): requests by
model/backend/status/HTTP code, latency, TTFT and overhead histograms, tokens, cost (integer nano-USD, exact),
energy, carbon, cache hits and rejections by reason; `refused(code)` counts a refusal answered before any
ledger row (a bad key, a 415, a 431) with the rejections. It only adds to plain per-series accumulators (no
lock: it runs on the event loop); every second, and before each scrape, `refresh` publishes them with one `inc`
per series (prometheus-client's own `inc`/`observe` take a lock each, ~1.5 µs apiece, ten a request: see
`benchmarks/telemetry_cost.py`), then reads what is not per request: each backend's circuit, faults and
retries, the ledger's queue (outbox) depth and ingest lag. `render` (the scrape, in a thread) reads only
what was published. Labels only ever hold names from the config or margin's own vocabulary (never a
caller's string), and each label keeps at most `MAX_LABEL_VALUES` values (then `other`), so no caller can
grow them.

Several workers (`margin serve --workers N`): the supervisor calls `prepare_multiprocess(dir)` before the
workers start; each worker then writes its values to files there (prometheus-client's multiprocess mode) and
any worker's `/metrics` merges all of them. Gauges of a worker that exited are dropped at the next scrape;
its counters stay (they happened). The budgets' gauges (`margin.telemetry.budgets`) are read at each scrape by
the worker that answers it, from the shared counters, and appended to this exposition (`render_with_budgets`):
they never go through those files, so no worker's copy is added to another's.
"""

from __future__ import annotations

import contextlib
import os
import re
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from margin.telemetry.budgets import BudgetGauges, BudgetSeries
from margin.telemetry.budgets import render as render_budgets

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MAX_LABEL_VALUES = 200
MAX_LABEL_CHARS = 256  # a config name whole (a request names a model in 128); two never share a series
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
STATES = {"closed": 0, "half_open": 1, "open": 2}
SHARED_OUTCOMES = ("received", "dropped", "skipped")  # the semantic cache's sharing (`margin.cache.shared`)
LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db")


# the files prometheus-client's multiprocess mode writes: `<type>[_<gauge mode>]_<pid>.db` (prometheus_client.values)
METRIC_FILE = re.compile(r"(counter|histogram|summary|gauge_(live)?(all|min|max|sum|mostrecent))_\d+\.db")


def prepare_multiprocess(path: Path) -> None:
    """For a supervisor, before it starts workers: a metrics directory without an earlier run's values, named in
    the environment the workers inherit (prometheus-client picks its multiprocess mode from it at import). The
    `*.db` files prometheus-client writes there, known by their names, are removed (its documentation asks for the
    directory to be emptied at start: an earlier run's counters would be added in); nothing else in it is touched,
    so an operator's directory that holds other files (a SQLite ledger, `margin.db`) keeps them."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):  # its names alone: a SQLite ledger (`margin.db`) in the same folder was deleted
        if METRIC_FILE.fullmatch(stale.name) and (stale.is_file() or stale.is_symlink()):
            stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)


def _use_multiprocess_values() -> None:
    """prometheus-client chose its value class when it was imported; a process that imported it before the
    directory was named (a forked worker) switches now, before any metric exists."""
    values = prometheus_client.values
    if values.ValueClass.__name__ != "MmapedValue":
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def _forget_dead_workers(path: str) -> None:
    """Drop the live gauges (queue depth, circuit states) of workers that are gone."""
    for name in os.listdir(path):
        match = LIVE_GAUGE_FILE.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:  # alive, another user's
            continue


@dataclass(slots=True)
class _Labels:
    """A label's values, bounded: past `MAX_LABEL_VALUES` distinct values, new ones read `other`; each value is
    kept whole up to `MAX_LABEL_CHARS` (cut at 64, two models whose names began alike were one series)."""

    seen: set[str] = field(default_factory=set)

    def __call__(self, value: object) -> str:
        text = "none" if value is None else str(value)[:MAX_LABEL_CHARS]
        if text in self.seen:
            return text
        if len(self.seen) >= MAX_LABEL_VALUES:
            return "other"
        self.seen.add(text)
        return text


@dataclass(slots=True)
class _Histogram:
    """Observations since the last publish: a count per bucket (the last one +Inf) and their sum."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def add(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value
        self.total += value

    def publish(self, child: Any) -> None:
        """Into a prometheus-client Histogram child: its per-bucket values (non-cumulative, as its `observe`
        keeps them) and its sum. Private attributes of the pinned prometheus-client; tests read them back."""
        if not any(self.counts):
            return
        for index, count in enumerate(self.counts):
            if count:
                child._buckets[index].inc(count)
                self.counts[index] = 0
        child._sum.inc(self.total)
        self.total = 0.0


@dataclass(slots=True)
class _Series:
    """One (model, backend, status, code): what its requests added since the last publish."""

    labels: tuple[str, str, str, str]
    requests: int = 0
    tokens: list[int] = field(default_factory=lambda: [0, 0, 0])  # input, output, cached
    cost: int = 0
    energy: float = 0.0
    co2e: float = 0.0
    e2e: _Histogram = field(default_factory=lambda: _Histogram(LATENCY_BUCKETS))
    ttft: _Histogram = field(default_factory=lambda: _Histogram(LATENCY_BUCKETS))


class _Families:
    """The metric families, in one registry (per gateway: no module-level state)."""

    def __init__(self, r: CollectorRegistry) -> None:
        per_model = ["model"]
        self.requests = Counter(
            "margin_requests", "Requests by served model, backend, ledger status and HTTP status.",
            ["model", "backend", "status", "code"], registry=r,
        )  # fmt: skip
        self.e2e = Histogram(
            "margin_request_duration_seconds", "End-to-end time of a request in margin.", per_model,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "margin_time_to_first_token_seconds", "Streams: request start to the first content sent.", per_model,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.overhead = Histogram(
            "margin_overhead_seconds", "Time spent in margin itself (x-margin-overhead-ms).",
            buckets=OVERHEAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter("margin_tokens", "Tokens metered.", ["model", "kind"], registry=r)
        self.cost = Counter("margin_cost_nanousd", "Cost in nano-USD (USD × 1e9, exact).", per_model, registry=r)
        self.energy = Counter("margin_energy_joules", "Facility energy of requests.", per_model, registry=r)
        self.co2e = Counter("margin_co2e_grams", "Carbon of requests (gCO2e).", per_model, registry=r)
        self.cache_hits = Counter("margin_cache_hits", "Answers from the cache.", ["type"], registry=r)
        self.rejections = Counter("margin_rejections", "Requests margin refused, by reason.", ["reason"], registry=r)
        self.token_counts = Counter(
            "margin_count_tokens",
            "Token counts (POST /v1/messages/count_tokens, /v1/responses/input_tokens; never ledger rows), by model "
            "and outcome.",
            ["model", "outcome"], registry=r,
        )  # fmt: skip
        self.dropped = Counter("margin_telemetry_dropped", "Telemetry lost (never ledger rows).", ["sink"], registry=r)
        self.semantic_shared = Counter(
            "margin_semantic_cache_shared",
            "Semantic-cache entries through Redis: received (added from other processes), dropped (not shared), "
            "skipped (records that failed a check).",
            ["outcome"],
            registry=r,
        )
        self.backend_state = Gauge(
            "margin_backend_circuit_state", "Circuit per backend: 0 closed, 1 half-open, 2 open.", ["backend"],
            registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.backend_faults = Counter("margin_backend_faults", "Backend faults.", ["backend"], registry=r)
        self.backend_retries = Counter("margin_backend_retries", "Retries in backend calls.", ["backend"], registry=r)
        self.pending_rows = Gauge(
            "margin_ledger_pending_rows", "Ledger rows acknowledged and not yet in the database.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.pending_bytes = Gauge(
            "margin_ledger_pending_bytes", "Bytes of the ledger outbox not yet ingested.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.ingest_lag = Gauge(
            "margin_ledger_ingest_lag_seconds", "Age of the oldest row not yet in the database.",
            registry=r, multiprocess_mode="livemax",
        )  # fmt: skip


class Metrics:
    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir:
            _use_multiprocess_values()
        self.registry = CollectorRegistry(auto_describe=True)
        self.families = _Families(self.registry)
        self._label = {name: _Labels() for name in ("model", "backend", "status", "reason", "type")}
        self._series: dict[tuple[Any, ...], _Series] = {}
        self._overhead = _Histogram(OVERHEAD_BUCKETS)
        self._tally: Tally[tuple[str, Any]] = Tally()  # cache hits by type, rejections by reason
        self._seen: dict[tuple[str, str], float] = {}  # last totals read by `refresh` (faults, retries)
        self.budgets = BudgetGauges()  # read at each scrape, never into the multiprocess files

    def _new_series(self, key: tuple[Any, str, str, int]) -> _Series:
        model, backend, status, code = key
        label = self._label
        series = _Series((label["model"](model), label["backend"](backend), label["status"](status), str(code)))
        self._series[key] = series
        return series

    def observe(self, row: Mapping[str, Any]) -> None:
        """One finished request, from its ledger row (published at the next `refresh`)."""
        key = (row["model"], row["backend"], row["status"], row["http_status"])
        series = self._series.get(key) or self._new_series(key)
        series.requests += 1
        series.e2e.add(row["e2e_ms"] / 1000)
        if row["ttft_ms"] is not None:
            series.ttft.add(row["ttft_ms"] / 1000)
        if row["overhead_ms"] is not None:
            self._overhead.add(row["overhead_ms"] / 1000)
        tokens = series.tokens
        tokens[0] += row["input_tokens"]
        tokens[1] += row["output_tokens"]
        tokens[2] += row["cached_tokens"]
        series.cost += row["cost_nanousd"] or 0
        series.energy += row["energy_j"] or 0.0
        series.co2e += row["co2e_g"] or 0.0
        if row["cache"]:
            self._tally[("type", row["cache"])] += 1
        if key[2] == "error" and key[3] >= 400:
            self._tally[("reason", row["error_code"])] += 1

    def refused(self, code: str | None) -> None:
        """One refusal margin answered itself before a ledger row (a bad key, a 415, an unknown route, a 431:
        `margin.api.errors.Refusal`, `margin.api.heads`), under its error code; published with the rows'
        rejections at the next `refresh`. Never called for a request that gets a row: `observe` counts those."""
        self._tally[("reason", code)] += 1

    def publish(self) -> None:
        """Move what requests added since the last call into the prometheus-client metrics."""
        f = self.families
        for series in self._series.values():
            if not series.requests:
                continue
            model = series.labels[0]
            f.requests.labels(*series.labels).inc(series.requests)
            for kind, count in zip(("input", "output", "cached"), series.tokens, strict=True):
                if count:
                    f.tokens.labels(model, kind).inc(count)
            for family, amount in ((f.cost, series.cost), (f.energy, series.energy), (f.co2e, series.co2e)):
                if amount:
                    family.labels(model).inc(amount)
            series.e2e.publish(f.e2e.labels(model))
            series.ttft.publish(f.ttft.labels(model))
            series.requests, series.tokens, series.cost, series.energy, series.co2e = 0, [0, 0, 0], 0, 0.0, 0.0
        self._overhead.publish(f.overhead)
        for (label, value), count in self._tally.items():
            family = f.cache_hits if label == "type" else f.rejections
            family.labels(self._label[label](value)).inc(count)
        self._tally.clear()
        if len(self._series) > 4 * MAX_LABEL_VALUES:  # the raw keys behind the bounded labels, bounded too
            self._series.clear()

    def refresh(self, state: Mapping[str, Any]) -> None:
        """Publish the requests' additions, then what is not per request (`Services.telemetry_state()`)."""
        self.publish()
        f = self.families
        for name, backend in state.get("backends", {}).items():
            label = self._label["backend"](name)
            f.backend_state.labels(label).set(STATES.get(backend.get("state", "closed"), 0))
            self._add(f.backend_faults.labels(label), (name, "faults"), backend.get("faults", 0))
            self._add(f.backend_retries.labels(label), (name, "retries"), backend.get("retries", 0))
        for gauge, key in ((f.pending_rows, "pending_rows"), (f.pending_bytes, "pending_bytes")):
            if state.get(key) is not None:
                gauge.set(state[key])
        if state.get("ingest_lag_s") is not None:
            f.ingest_lag.set(state["ingest_lag_s"])
        if state.get("refused_backlogged") is not None:  # refused before any work: these requests have no row
            backlog = f.rejections.labels(self._label["reason"]("ledger_backlog"))
            self._add(backlog, ("", "refused_backlogged"), state["refused_backlogged"])
        for outcome in SHARED_OUTCOMES:
            total = state.get("semantic_shared", {}).get(outcome)
            if total is not None:
                self._add(f.semantic_shared.labels(outcome), ("semantic_shared", outcome), total)

    def _add(self, counter: Any, key: tuple[str, str], total: float) -> None:
        """Bring a counter to a total kept elsewhere (a total that went down restarted from zero)."""
        last = self._seen.get(key, 0)
        delta = total - last if total >= last else total
        if delta > 0:
            counter.inc(delta)
        self._seen[key] = total

    def count_tokens(self, model: str | None, outcome: str) -> None:
        """One token count: the model it counted for (None before one was resolved), `ok` or its error."""
        self.families.token_counts.labels(self._label["model"](model), self._label["reason"](outcome)).inc()

    def drop(self, sink: str, count: int = 1) -> None:
        self.families.dropped.labels(sink).inc(count)

    def render(self) -> bytes:
        """The text exposition: this process's metrics, or every worker's in multiprocess mode."""
        if not self.multiprocess_dir:
            return generate_latest(self.registry)
        return render_multiprocess(self.multiprocess_dir)

    def render_with_budgets(self, budgets: Sequence[BudgetSeries] | None) -> bytes:
        """`render`, then the budgets read for this scrape (`None`: they could not be read): from this
        process, never from the shared files, so N workers never add up N copies of them."""
        return self.render() + render_budgets(budgets)


class _WrittenFiles:
    """prometheus-client's merge of a directory's files, without the files a worker that is starting has created
    and not sized yet (empty: reading one raised `struct.error`, and a scrape at that moment answered 500)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Any:
        files = [str(f) for f in Path(self.path).glob("*.db") if _sized(f)]
        return multiprocess.MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]


def _sized(file: Path) -> bool:
    try:
        return file.stat().st_size > 0
    except OSError:  # removed since the listing (an exited worker's live gauges)
        return False


def render_multiprocess(path: str) -> bytes:
    """Every worker's metrics merged from the files in `path` (live gauges of exited workers dropped)."""
    with contextlib.suppress(OSError):
        _forget_dead_workers(path)
    merged = CollectorRegistry()
    merged.register(_WrittenFiles(path))
    return generate_latest(merged)
