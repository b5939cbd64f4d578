"""KeyedGate: a key's places in flight, in one process, and across processes over a real Redis (the file
gates of `--workers N` and replicas, margin.services)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from margin.errors import Overloaded, RateLimited
from margin.gates import KeyedGate
from margin.governance.redis_store import RedisStore
from margin.governance.slots import DOWNLOADS, STREAMS, UPLOADS, SharedSlots
from tests.helpers import free_port


async def _hold(gate: KeyedGate, name: str, entered: asyncio.Event, leave: asyncio.Event) -> None:
    async with gate.slot(name):
        entered.set()
        await leave.wait()


@contextlib.asynccontextmanager
async def holding(gate: KeyedGate, name: str, count: int) -> AsyncIterator[asyncio.Event]:
    """`count` tasks of `name` inside the gate until the block ends (set the event to let them go early)."""
    leave = asyncio.Event()
    entered = [asyncio.Event() for _ in range(count)]
    tasks = [asyncio.create_task(_hold(gate, name, event, leave)) for event in entered]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in entered)), 5)
    try:
        yield leave
    finally:
        leave.set()
        await asyncio.gather(*tasks)


async def test_one_process_runs_its_share_lets_some_wait_and_refuses_the_rest() -> None:
    gate = KeyedGate(running=2, waiting=1, what="file upload")
    async with holding(gate, "k", 2):
        waiter = asyncio.create_task(_hold(gate, "k", asyncio.Event(), asyncio.Event()))
        await asyncio.sleep(0.05)
        with pytest.raises(RateLimited, match="3 file uploads in flight"):
            async with gate.slot("k"):
                pass
        async with gate.slot("other"):  # another key: not held up
            pass
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
    assert gate._names == {}  # an entry lives only while its key has one in flight


async def test_shared_places_are_the_keys_across_processes(redis_url: str) -> None:
    """Two gates over one Redis (two workers): the key's two places are taken once on each, so a third on
    either is refused (waiting 0: at once). A stream lease of the key is no upload's or download's place
    (each pool its own count). Once one ends, the other process runs one again."""
    store = RedisStore(redis_url)
    key = f"k-{uuid.uuid4().hex[:8]}"
    first_slots, second_slots = SharedSlots(2, store, DOWNLOADS, "file download"), SharedSlots(2, store, DOWNLOADS)
    first = KeyedGate(running=2, waiting=0, what="file download", shared=first_slots)
    second = KeyedGate(running=2, waiting=0, what="file download", shared=second_slots)
    try:
        assert await store.take_slot(key, "a-stream", 1, 30.0, STREAMS)  # the key's stream cap, full
        assert await store.take_slot(key, "an-upload", 1, 30.0, UPLOADS)
        async with holding(first, key, 1), holding(second, key, 1) as leave_second:
            for gate in (first, second):
                with pytest.raises(RateLimited, match="file download"):
                    async with gate.slot(key):
                        pass
            leave_second.set()
            await asyncio.sleep(0.2)  # its release reaches Redis
            async with first.slot(key):  # the place the other process gave back
                pass
    finally:
        await first_slots.close()
        await second_slots.close()
        await store.close()


async def test_a_waiter_asks_the_shared_places_again_for_a_bounded_time(redis_url: str) -> None:
    """Waiting stays per process: a task whose process has a place free but finds the key's places taken
    elsewhere asks again until one is given back (then runs), or for at most `wait_s` (then 429)."""
    store = RedisStore(redis_url)
    key = f"k-{uuid.uuid4().hex[:8]}"
    elsewhere, here = SharedSlots(1, store, UPLOADS), SharedSlots(1, store, UPLOADS)
    other = KeyedGate(running=1, waiting=4, what="file upload", shared=elsewhere)
    gate = KeyedGate(running=1, waiting=4, what="file upload", shared=here, wait_s=0.5)
    try:
        async with holding(other, key, 1) as leave:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(RateLimited, match="1 file uploads in flight"):
                async with gate.slot(key):
                    pass
            assert 0.3 < loop.time() - started < 2  # asked again, not refused at once, not for ever
            assert gate._names == {}
            asked = loop.time()
            loop.call_later(0.3, leave.set)  # the other process's upload ends meanwhile
            async with gate.slot(key):
                assert loop.time() - asked >= 0.3  # it waited for that place (then took it)
    finally:
        await elsewhere.close()
        await here.close()
        await store.close()


async def test_the_shared_places_fail_closed_when_redis_is_unavailable() -> None:
    """No Redis to count them: the upload is refused with the store's own error (503), never let through
    uncounted, and it holds no place of its process afterwards."""
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    slots = SharedSlots(2, store, UPLOADS)
    gate = KeyedGate(running=2, waiting=4, what="file upload", shared=slots)
    try:
        for _ in range(8):  # more than running + waiting: each refusal gave its place back
            with pytest.raises(Overloaded) as refused:
                async with gate.slot("k"):
                    pytest.fail("admitted without Redis")
            assert refused.value.code == "governance_unavailable"
        assert gate._names == {}
    finally:
        await slots.close()
        await store.close()


class _SlowReply:
    """A store that takes the slot, then is slow to answer (the reply still on its way when the caller is
    cancelled)."""

    def __init__(self) -> None:
        self.taken: set[str] = set()
        self.reached = asyncio.Event()  # Redis has taken it
        self.answer = asyncio.Event()

    async def take_slot(self, key: str, lease: str, cap: int, lease_s: float, pool: str = STREAMS) -> bool:
        self.taken.add(lease)
        self.reached.set()
        await self.answer.wait()
        return True

    async def free_slot(self, key: str, lease: str, pool: str = STREAMS) -> None:
        self.taken.discard(lease)

    async def renew_slots(self, leases: object, lease_s: float, pool: str = STREAMS) -> list[int]:
        return []

    async def restore_slots(self, leases: object, lease_s: float, pool: str = STREAMS) -> None:
        return None


async def test_a_lease_taken_while_its_caller_was_cancelled_is_given_back() -> None:
    """Cancelled between Redis taking the lease and its reply (a client gone, a timeout): the lease was never
    recorded as held, so nothing freed it, and it held one of the key's places until it expired (30 s)."""
    store = _SlowReply()
    slots = SharedSlots(2, store, UPLOADS)
    taking = asyncio.create_task(slots.acquire("k", "lease-1"))
    await store.reached.wait()
    taking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taking
    await slots.close()  # waits for the freeing it started
    assert store.taken == set()
