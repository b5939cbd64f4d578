"""A fair share of a few threads per caller: `KeyedGate` runs at most `running` tasks of one name (an API key)
at a time, lets at most `waiting` more wait for them, and refuses the next at once (429). No name holds more
than its share however many requests it sends, and a name's entry lives only while it has one in flight."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from margin.errors import RateLimited


@dataclass(slots=True)
class _Entry:
    semaphore: asyncio.Semaphore
    holders: int = 0  # running + waiting


class KeyedGate:
    def __init__(self, running: int = 1, waiting: int = 4, what: str = "request") -> None:
        self.running, self.waiting, self.what = running, waiting, what
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
            raise RateLimited(
                f"this key has {entry.holders} {self.what}s in flight, the most one key may; retry when they end",
                headers={"retry-after": "1"},
            )
        entry.holders += 1
        try:
            async with entry.semaphore:
                yield
        finally:
            entry.holders -= 1
            if entry.holders == 0 and self._names.get(name) is entry:
                del self._names[name]
