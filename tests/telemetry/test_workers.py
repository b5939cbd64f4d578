"""`/metrics` with several worker processes on one port (uvicorn's multi-process mode, as `margin serve
--workers N` runs them): whichever worker answers the scrape, it counts every worker's requests (each
worker publishes its own within a second)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from margin.ledger import db
from margin.telemetry.metrics import MULTIPROC_ENV
from tests.helpers import free_port
from tests.security.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 30


def _requests_total(text: str) -> float:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return sum(s.value for s in families["margin_requests"].samples if s.name == "margin_requests_total")


def test_metrics_count_every_workers_requests(tmp_path: Path) -> None:
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    db.upgrade(ledger)  # once, before two workers start
    config = tmp_path / "margin.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": {"ledger": ledger, "flush_interval_ms": 10},
                "backends": {"fake": {"kind": "fake", "output_tokens": 2}},
                "models": {"fake-chat": {"backend": "fake"}},
            }
        )
    )
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    env = {**os.environ, MULTIPROC_ENV: str(metrics_dir), "MARGIN_TEST_CONFIG": str(config)}
    command = [sys.executable, "-m", "uvicorn", "tests.telemetry.worker_app:app", "--factory", "--workers", "2",
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        seen: set[int] = set()  # the second worker may still be starting when the first answers

        def both_answered() -> bool:
            if ready():
                with httpx.Client(base_url=url, timeout=10) as fresh:
                    seen.add(fresh.get("/healthz").json()["pid"])
            return len(seen) == 2

        wait_for(both_answered, "two workers", timeout_s=60)
        body = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(REQUESTS):  # a new connection each: either worker may take it
            with httpx.Client(base_url=url, timeout=10) as client:
                assert client.post("/v1/chat/completions", json=body).status_code == 200
        pids = {m.group(1) for name in os.listdir(metrics_dir) if (m := re.search(r"_(\d+)\.db$", name))}
        assert len(pids) == 2  # both workers write their own files

        def scrape() -> float:
            with httpx.Client(base_url=url, timeout=10) as client:
                scraped = client.get("/metrics")
            assert scraped.status_code == 200
            return _requests_total(scraped.text)

        wait_for(lambda: scrape() == REQUESTS, "each worker to publish (every second)", timeout_s=10)
        assert [scrape() for _ in range(4)] == [REQUESTS] * 4  # whichever worker answers the scrape
    finally:
        process.terminate()
        process.wait(timeout=30)
