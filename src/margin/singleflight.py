"""One query for many waiters: concurrent callers asking for the same name share one run of it."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class SingleFlight:
    """`await flights.run(name, query)` starts `query()` unless a run for `name` is in flight, and waits for
    that run either way. A failure reaches every waiter and the next caller tries again; a caller cancelled
    while waiting does not cancel the run the others wait for."""

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[Any]] = {}

    async def run(self, name: str, query: Callable[[], Awaitable[T]]) -> T:
        future = self._inflight.get(name)
        if future is None:
            future = self._inflight[name] = asyncio.ensure_future(query())
            future.add_done_callback(functools.partial(self._landed, name))
        result: T = await asyncio.shield(future)
        return result

    def _landed(self, name: str, future: asyncio.Future[Any]) -> None:
        if self._inflight.get(name) is future:
            del self._inflight[name]
        if not future.cancelled():
            future.exception()  # retrieved, so a failure no waiter is left to see is not logged as lost
