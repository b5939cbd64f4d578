"""A fair share of a few threads per caller: `KeyedGate` runs at most `running` tasks of one name (an API key)
at a time, lets at most `waiting` more wait for them, and refuses the next at once (429). No name holds more
than its share however many requests it sends, and a name's entry lives only while it has one in flight.

With `shared` (a count that every process sharing a Redis keeps: margin.governance.slots.SharedSlots), the
`running` places are the name's across all those processes (the workers of `--workers N`, replicas): a task
takes a lease there once it has one of its process's places, and gives it back when it ends. `waiting` stays
per process (waiters hold nothing but a connection): a waiter whose process has a place free but finds the
shared ones taken asks again every `POLL_S` (doubling up to `POLL_MAX_S`), for at most `wait_s`, then is
refused (429); with `waiting` 0 it is refused at once. A store that cannot answer refuses the task with its
own error (503, margin.errors.Overloaded): never run uncounted."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from margin.errors import RateLimited

POLL_S = 0.05
POLL_MAX_S = 0.5
WAIT_S = 30.0


class SharedCount(Protocol):
    async def acquire(self, key: str, lease: str) -> bool: ...

    def release(self, key: str, lease: str) -> None: ...


@dataclass(slots=True)
class _Entry:
    semaphore: asyncio.Semaphore
    holders: int = 0  # running + waiting


class KeyedGate:
    def __init__(
        self,
        running: int = 1,
        waiting: int = 4,
        what: str = "request",
        shared: SharedCount | None = None,
        wait_s: float = WAIT_S,
    ) -> None:
        self.running, self.waiting, self.what = running, waiting, what
        self.shared, self.wait_s = shared, wait_s
        self._names: dict[str, _Entry] = {}

    @contextlib.asynccontextmanager
    async def slot(self, name: str | None) -> AsyncIterator[None]:
        """Hold one of `name`'s places while the block runs (None: no gate, an operator's own work)."""
        if name is None:
            yield
            return
        entry = self._names.get(name)
        if entry is None:
            entry = self._names[name] = _Entry(asyncio.Semaphore(self.running))
        if entry.holders >= self.running + self.waiting:
            raise self._refused(entry.holders)
        entry.holders += 1
        try:
            async with entry.semaphore:
                if self.shared is None:
                    yield
                else:
                    lease = uuid.uuid4().hex
                    await self._lease(self.shared, name, lease)
                    try:
                        yield
                    finally:
                        self.shared.release(name, lease)
        finally:
            entry.holders -= 1
            if entry.holders == 0 and self._names.get(name) is entry:
                del self._names[name]

    async def _lease(self, shared: SharedCount, name: str, lease: str) -> None:
        """One of `name`'s places across processes, asked for again while it may wait (bounded), else 429."""
        deadline = time.monotonic() + (self.wait_s if self.waiting else 0.0)
        pause = POLL_S
        while not await shared.acquire(name, lease):
            if time.monotonic() + pause > deadline:
                raise self._refused(self.running)
            await asyncio.sleep(pause)
            pause = min(2 * pause, POLL_MAX_S)

    def _refused(self, holders: int) -> RateLimited:
        return RateLimited(
            f"this key has {holders} {self.what}s in flight, the most one key may; retry when they end",
            headers={"retry-after": "1"},
        )
