"""Prometheus metrics from ledger rows: what each row adds, bounded labels, gauges refreshed from the state
that is not per request, and several processes merged through prometheus-client's multiprocess files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from margin.telemetry.metrics import MAX_LABEL_VALUES, Metrics, render_multiprocess

ROOT = Path(__file__).resolve().parents[2]


def row(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "request_id": "r1",
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
        "endpoint": "chat.completions",
        "model": "m",
        "requested_model": "m",
        "backend": "b",
        "team": None,
        "status": "ok",
        "http_status": 200,
        "error_code": None,
        "stream": True,
        "input_tokens": 10,
        "output_tokens": 4,
        "cached_tokens": 0,
        "ttft_ms": 30.0,
        "e2e_ms": 120.0,
        "overhead_ms": 0.4,
        "cost_nanousd": 1500,
        "energy_j": 2.5,
        "co2e_g": 0.01,
        "cache": None,
    }
    return {**base, **overrides}


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_each_row_counts_once_in_every_family() -> None:
    """Published in batches: what the exposition shows equals one prometheus-client `observe`/`inc` per row."""
    metrics = Metrics()
    metrics.observe(row())
    metrics.observe(row(request_id="r2", stream=False, ttft_ms=None, e2e_ms=3000.0))
    metrics.observe(row(request_id="r3", status="error", http_status=429, error_code="budget_exceeded",
                        model=None, backend=None, input_tokens=0, output_tokens=0, cost_nanousd=0, energy_j=None,
                        co2e_g=None, ttft_ms=None))  # fmt: skip
    metrics.observe(row(request_id="r4", cache="exact", cost_nanousd=0))
    assert value(samples(metrics.render()), "margin_overhead_seconds_count") == 0  # not published yet
    metrics.publish()
    found = samples(metrics.render())
    assert value(found, "margin_requests_total", model="m", backend="b", status="ok", code="200") == 3
    assert value(found, "margin_requests_total", model="none", backend="none", status="error", code="429") == 1
    assert value(found, "margin_rejections_total", reason="budget_exceeded") == 1
    assert value(found, "margin_tokens_total", model="m", kind="input") == 30
    assert value(found, "margin_tokens_total", model="m", kind="output") == 12
    assert value(found, "margin_cost_nanousd_total", model="m") == 3000  # exact integers
    assert value(found, "margin_energy_joules_total", model="m") == 7.5
    assert value(found, "margin_cache_hits_total", type="exact") == 1
    assert value(found, "margin_time_to_first_token_seconds_count", model="m") == 2  # streams only
    assert value(found, "margin_request_duration_seconds_bucket", model="m", le="0.25") == 2
    assert value(found, "margin_request_duration_seconds_bucket", model="m", le="5.0") == 3
    assert value(found, "margin_overhead_seconds_count") == 4


def test_labels_are_bounded() -> None:
    metrics = Metrics()
    for i in range(MAX_LABEL_VALUES + 50):
        metrics.observe(row(request_id=str(i), status="error", http_status=400, error_code=f"code-{i}"))
    metrics.publish()
    found = samples(metrics.render())
    reasons = {dict(labels)["reason"] for name, labels in found if name == "margin_rejections_total"}
    assert len(reasons) == MAX_LABEL_VALUES + 1 and "other" in reasons
    assert value(found, "margin_rejections_total", reason="other") == 50


def test_long_config_names_stay_apart() -> None:
    """Models named by long upstream ids (a Bedrock inference profile's ARN) that differ only at their end are
    two series, each with its own requests and cost (a cut at 64 characters made them one)."""
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20241022-v"
    metrics = Metrics()
    metrics.observe(row(model=arn + "1:0", backend="bedrock-" + "b" * 100))
    metrics.observe(row(request_id="r2", model=arn + "2:0", cost_nanousd=700, backend="bedrock-" + "b" * 100))
    metrics.publish()
    found = samples(metrics.render())
    backend = "bedrock-" + "b" * 100
    for model, cost in ((arn + "1:0", 1500), (arn + "2:0", 700)):
        assert value(found, "margin_requests_total", model=model, backend=backend, status="ok", code="200") == 1
        assert value(found, "margin_cost_nanousd_total", model=model) == cost


def test_refresh_sets_gauges_and_turns_totals_into_counters() -> None:
    metrics = Metrics()
    state: dict[str, Any] = {
        "backends": {"up": {"state": "open", "faults": 3, "retries": 5}},
        "pending_rows": 42,
        "refused_backlogged": 2,
        "semantic_shared": {"received": 7, "dropped": 1, "skipped": 0},
    }
    metrics.refresh(state)
    metrics.refresh({**state, "backends": {"up": {"state": "half_open", "faults": 4, "retries": 5}}})
    found = samples(metrics.render())
    assert value(found, "margin_backend_circuit_state", backend="up") == 1
    assert value(found, "margin_backend_faults_total", backend="up") == 4
    assert value(found, "margin_backend_retries_total", backend="up") == 5
    assert value(found, "margin_ledger_pending_rows") == 42
    assert value(found, "margin_rejections_total", reason="ledger_backlog") == 2
    assert value(found, "margin_semantic_cache_shared_total", outcome="received") == 7
    assert value(found, "margin_semantic_cache_shared_total", outcome="dropped") == 1


WORKER = """
import sys
from margin.telemetry.metrics import Metrics
from tests.telemetry.test_metrics import row
metrics = Metrics(sys.argv[1])
for i in range(int(sys.argv[2])):
    metrics.observe(row(request_id=str(i)))
metrics.refresh({"backends": {}, "pending_rows": int(sys.argv[2])})
print("ready", flush=True)
sys.stdin.read()  # stay alive until the test closes stdin
"""


def _worker(directory: Path, requests: int) -> subprocess.Popen[str]:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory), "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WORKER), str(directory), str(requests)],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def _stop(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.close()
    process.wait(timeout=30)
    process.stdout.close()


def test_several_processes_are_merged_and_an_exited_ones_gauges_dropped(tmp_path: Path) -> None:
    first, second = _worker(tmp_path, 3), _worker(tmp_path, 5)
    try:
        found = samples(render_multiprocess(str(tmp_path)))
        assert value(found, "margin_requests_total", model="m", backend="b", status="ok", code="200") == 8
        assert value(found, "margin_ledger_pending_rows") == 8  # live workers' queues, summed
        _stop(first)
        found = samples(render_multiprocess(str(tmp_path)))
        assert value(found, "margin_requests_total", model="m", backend="b", status="ok", code="200") == 8
        assert value(found, "margin_ledger_pending_rows") == 5  # the exited worker's queue no longer counts
    finally:
        for process in (first, second):
            if process.returncode is None:
                _stop(process)


def test_batched_histograms_match_prometheus_own_observe() -> None:
    """Bucket edges included (a value equal to a bound falls in that bucket), and values past the last one."""
    from prometheus_client import CollectorRegistry, Histogram

    from margin.telemetry.metrics import LATENCY_BUCKETS

    seconds = [0.0, 0.005, 0.0050001, 0.1, 1, 2.5, 299.9, 300, 300.1, 10_000, *(i / 97 for i in range(500))]
    ours = Metrics()
    for i, s in enumerate(seconds):
        ours.observe(row(request_id=str(i), e2e_ms=s * 1000))
    ours.publish()
    registry = CollectorRegistry()
    theirs = Histogram("margin_request_duration_seconds", "x", ["model"], buckets=LATENCY_BUCKETS, registry=registry)
    for s in seconds:
        theirs.labels("m").observe(s * 1000 / 1000)

    def histogram(text: bytes) -> dict[Any, float]:
        return {
            k: v
            for k, v in samples(text).items()
            if k[0].startswith("margin_request_duration") and "_created" not in k[0]
        }

    assert histogram(ours.render()) == histogram(generate_latest(registry))


def test_a_file_a_starting_worker_has_not_sized_yet_is_skipped(tmp_path: Path) -> None:
    """A worker that is starting creates its file empty and sizes it a moment later: a scrape then read it and
    failed (`struct.error`, a 500 from /metrics in a CI run with `--workers 2`)."""
    worker = _worker(tmp_path, 3)
    try:
        (tmp_path / "counter_99999.db").touch()  # what a starting worker leaves for a moment
        found = samples(render_multiprocess(str(tmp_path)))
        assert value(found, "margin_requests_total", model="m", backend="b", status="ok", code="200") == 3
    finally:
        _stop(worker)
