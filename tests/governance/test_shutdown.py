"""A background task that swallowed its cancellation must not hold the gateway's shutdown. Seen: a replica that
never exited after SIGTERM, its governance loop back at its sleep and still "cancelling" (a call inside it had
swallowed the `CancelledError`: a library catching it mid-call, or CPython 3.11's `asyncio.wait_for` losing one
that races its inner future), while the lifespan's shutdown awaited that loop for ever."""

from __future__ import annotations

import asyncio
import contextlib
import time

from margin.config import parse_settings
from margin.governance.service import Governance
from margin.governance.store import LocalStore


async def test_a_governance_loop_that_swallowed_its_cancellation_still_ends_on_close() -> None:
    governance = Governance(parse_settings({"admission": {"refresh_s": 0.01}}), engine=None, store=LocalStore())
    inside = asyncio.Event()
    calls = 0

    async def refresh() -> None:  # the rules' reload, as a call that swallows a cancellation arriving mid-call
        nonlocal calls
        calls += 1
        if calls == 1:  # `start`'s own refresh
            return
        inside.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)

    governance.refresh = refresh  # type: ignore[method-assign]
    await governance.start()
    await asyncio.wait_for(inside.wait(), 5)
    started = time.monotonic()
    await asyncio.wait_for(governance.close(), 10)  # before: awaited the loop for ever (it went on looping)
    assert governance._task is not None and governance._task.done()
    assert time.monotonic() - started < 4  # ended by its own flag, not left behind at the bound (5 s)


async def test_a_task_that_never_ends_is_left_behind_after_the_bound() -> None:
    from margin import tasks

    finish = False

    async def stubborn() -> None:
        while not finish:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue

    task = asyncio.get_running_loop().create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    started = time.monotonic()
    assert await tasks.stop(task, timeout_s=0.2) is False
    assert 0.2 <= time.monotonic() - started < 2 and not task.done()
    finish = True
    assert await tasks.stop(task, timeout_s=5) is True and task.done()


async def test_stopping_an_ended_or_absent_task() -> None:
    from margin import tasks

    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.get_running_loop().create_task(fails())
    await asyncio.sleep(0)
    assert await tasks.stop(task) is True  # its exception retrieved (no "never retrieved" warning) and logged
    assert await tasks.stop(None) is True
