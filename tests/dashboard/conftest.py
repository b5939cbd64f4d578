"""A live gateway on a seeded ledger (in a thread, its own event loop) and one headless Chromium for all
browser tests (module-scoped: playwright's sync API keeps its own event loop current, which must be gone
before the async tests of other modules run). Chromium is Debian's `chromium` package (`make test`
installs it); playwright drives it and never downloads a browser. Screenshots go to $MARGIN_TEST_ARTIFACTS/dashboard
(default: test-artifacts/dashboard)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from margin.app import build_app
from tests.dashboard.seed import REVENUE, seed
from tests.helpers import fake_settings, live_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BUDGETS = [
    {"name": "search-month", "scope": {"kind": "team", "value": "search"}, "usd": "10", "period": "month"},
    {"name": "ads-day", "scope": {"kind": "team", "value": "ads"}, "tokens": 100000, "period": "day"},
]


@dataclass
class LiveDashboard:
    url: str
    db_path: Path
    keys: dict[str, str]
    artifacts: Path


class _ServerThread(threading.Thread):
    def __init__(self, app: Any) -> None:
        super().__init__(name="dashboard-live-server", daemon=True)
        self.app = app
        self.url = ""
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the fixture, which fails the test
            self.error = exc
            self.ready.set()

    async def _serve(self) -> None:
        async with live_server(self.app) as url:
            self.url = url
            self.ready.set()
            await asyncio.to_thread(self.stop.wait)


@pytest.fixture(scope="module")
def live_dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDashboard]:
    db_path = tmp_path_factory.mktemp("dashboard") / "ledger.db"
    made = seed(db_path)
    server = _ServerThread(build_app(fake_settings(db_path, budgets=BUDGETS, revenue=REVENUE)))
    server.start()
    server.ready.wait(30)
    if server.error is not None or not server.url:
        pytest.fail(f"the live gateway did not start: {server.error!r}")
    root = Path(os.environ.get("MARGIN_TEST_ARTIFACTS") or Path(__file__).parents[2] / "test-artifacts")
    artifacts = root / "dashboard"
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        yield LiveDashboard(server.url, db_path, made, artifacts)
    finally:
        server.stop.set()
        server.join(30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (or: sudo apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
