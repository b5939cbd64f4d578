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


async def _a_row_waits_on_a_failed_pass(gw: Any, outbox: Any) -> None:
    """A request answered (its row waits in the outbox), then the ingester's pass seen failing (up to 30 s)."""
    assert (await gw.http.post(CHAT, json=chat("fake-chat"))).status_code == 200
    for _ in range(600):
        if outbox.stats()["last_error"] is not None:
            break
        await asyncio.sleep(0.05)


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
            await _a_row_waits_on_a_failed_pass(gw, outbox)
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


async def test_the_store_restart_path_waits_for_a_pass_after_a_failed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A counter store seen restarted (Redis' run id changed) has its counters raised to the ledger's spend,
    read once this process's outbox is in the ledger: that path waits for one ingest pass, whatever the last one
    did. Before, it used the new counter's fast refusal (Outbox.caught_up): with the last pass failed and none
    since (the database just back), it waited for none and read the ledger without the outbox's rows. Here the
    ingester's loop is held between a failed pass and the next, the ledger back meanwhile, when the restart is
    seen; the rows still in the outbox when the restart path reads the ledger are counted."""
    async with gateway(fake_settings(tmp_path / "l.db", budgets=[BUDGET])) as gw:
        governance, outbox = gw.services.governance, gw.services.outbox
        ingester = outbox._ingester
        down, paused, resume, entered = [True], threading.Event(), threading.Event(), threading.Event()
        real_pass, real_follow, real_request = ingester._pass, ingester._follow_own, ingester.request_pass
        real_replay = governance._replay_finished
        asked: list[int] = []
        outboxed: list[int] = []  # the outbox's rows when the restart path reads the ledger

        def failing() -> int:
            if down[0]:
                raise OSError("the ledger is locked")
            return real_pass()

        def held() -> None:
            if paused.is_set():
                entered.set()
                resume.wait()
            real_follow()

        def request() -> Any:
            asked.append(1)
            return real_request()

        async def replay(usd: dict[str, bool]) -> int:
            outboxed.append(outbox.depth.rows)
            return await real_replay(usd)

        monkeypatch.setattr(ingester, "_pass", failing)
        monkeypatch.setattr(ingester, "_follow_own", held)
        try:
            await _a_row_waits_on_a_failed_pass(gw, outbox)
            paused.set()
            assert await asyncio.to_thread(entered.wait, 30)  # the loop held before its next pass
            down[0] = False  # the ledger is back; the last pass's error is still the ingester's last word
            assert outbox.stats()["last_error"] == "the ledger is locked" and outbox.depth.rows == 1
            monkeypatch.setattr(ingester, "request_pass", request)
            monkeypatch.setattr(governance, "_replay_finished", replay)
            governance._server = "the store before its restart"
            restart = asyncio.ensure_future(governance._follow_restart())
            for _ in range(600):  # the restart path asks for a pass (now), or goes on without one (before)
                if restart.done() or asked:
                    break
                await asyncio.sleep(0.05)
            resume.set()
            await asyncio.wait_for(restart, 30)
        finally:
            resume.set()
            monkeypatch.undo()
        assert outboxed == [0]  # the row was in the ledger when it was read
