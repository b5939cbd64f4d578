"""A budget counter made from the ledger for the first time (a new budget, a process start, a counter Redis lost)
waits for this process's outbox to reach the ledger first, so the rows acknowledged a moment ago are counted.
That wait is bounded (`flush_timeout_s`, 10 s) and refused with a retryable 503 when it ends. Before, a request
always waited for a whole ingest pass: with nothing in the outbox (no row to count) it still waited for one, and
with the ingester failing (the ledger locked or away) it waited for another pass to fail, up to the 10 s, to be
refused all the same. Now no pass is waited for when no row waits, and a request is refused at once while the
last pass failed. Here the wait is made 120 s long and the ingester's passes hang: a request held on it fails the
test's 30 s bound."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import fake_settings, gateway

CHAT = "/v1/chat/completions"
BUDGET = {"name": "priced", "scope": {"kind": "model", "value": "priced"}, "usd": "100", "period": "day"}


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


async def test_a_new_counter_with_no_row_waiting_is_made_without_waiting_for_a_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with gateway(fake_settings(tmp_path / "l.db", budgets=[BUDGET])) as gw:
        gw.services.governance.flush_timeout_s = 120
        ingester = gw.services.outbox._ingester
        for _ in range(600):  # started: it has looked for dead processes' files (none), whose rows would wait
            if ingester.stats.scans:
                break
            await asyncio.sleep(0.05)
        hung = threading.Event()
        monkeypatch.setattr(ingester, "_pass", hung.wait)  # every pass hangs
        try:
            answer = await asyncio.wait_for(gw.http.post(CHAT, json=chat("priced")), 30)
            assert answer.status_code == 200, answer.text
        finally:
            monkeypatch.undo()
            hung.set()


async def test_a_new_counter_while_the_ingest_fails_is_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with gateway(fake_settings(tmp_path / "l.db", budgets=[BUDGET])) as gw:
        gw.services.governance.flush_timeout_s = 120
        outbox, hung, passes = gw.services.outbox, threading.Event(), []

        def failing_then_hung() -> int:
            passes.append(1)
            if len(passes) > 1:
                hung.wait()
            raise OSError("the ledger is locked")

        monkeypatch.setattr(outbox._ingester, "_pass", failing_then_hung)
        try:
            assert (await gw.http.post(CHAT, json=chat("fake-chat"))).status_code == 200  # its row waits
            for _ in range(600):
                if outbox.stats()["last_error"] is not None:
                    break
                await asyncio.sleep(0.05)
            assert outbox.stats()["last_error"] == "the ledger is locked" and outbox.depth.rows == 1
            answer = await asyncio.wait_for(gw.http.post(CHAT, json=chat("priced")), 30)
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "governance_unavailable"
            assert answer.headers["retry-after"] == "1"
        finally:
            monkeypatch.undo()
            hung.set()
        for _ in range(600):  # the ledger back: the next pass moves the row
            if outbox.stats()["last_error"] is None and outbox.depth.rows == 0:
                break
            await asyncio.sleep(0.05)
        assert (await gw.http.post(CHAT, json=chat("priced"))).status_code == 200  # then the counter is made
