"""`PROMETHEUS_MULTIPROC_DIR` set by the operator, with `margin serve --workers N`: the `*.db` files an earlier run
left there are removed at start (prometheus-client's documentation asks for the directory to be emptied), so a
restarted gateway's counters start at 0; the operator's other files stay. Before, the directory was used as it
was, and every scrape added the previous run's requests to this one's. `margin serve` over real HTTP, the
official openai SDK as the client."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from margin.telemetry.metrics import MULTIPROC_ENV
from tests.security.conftest import Served, ServeFactory, serving_in
from tests.security.waiting import wait_for
from tests.telemetry.test_budget_gauges import scrape

REQUESTS = 5


@pytest.fixture
def served(tmp_path: Path) -> ServeFactory:
    return serving_in(tmp_path)


def _requests_total(gw: Served) -> float:
    family = scrape(gw, gw.keys["admin"]).get("margin_requests")  # none before a first request
    return 0 if family is None else sum(s.value for s in family.samples if s.name == "margin_requests_total")


def test_an_operators_metrics_directory_is_emptied_of_an_earlier_runs_files(
    served: ServeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "notes.txt").write_text("the operator's")
    monkeypatch.setenv(MULTIPROC_ENV, str(folder))
    with served({}, keys={"admin": ["--admin"]}, extra=["--workers", "2"]) as gw:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.keys["admin"], max_retries=0)
        for _ in range(REQUESTS):
            client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "a b c"}])
        wait_for(lambda: _requests_total(gw) == REQUESTS, "each worker to publish (every second)", timeout_s=15)
    assert list(folder.glob("*.db"))  # the run's files stay behind it
    with served({}, keys={"admin": ["--admin"]}, extra=["--workers", "2"]) as gw:
        assert [_requests_total(gw) for _ in range(4)] == [0] * 4  # before: 5, the earlier run's requests
    assert (folder / "notes.txt").read_text() == "the operator's"  # only prometheus-client's files are removed
