"""Batched, idempotent ledger writes. The request path only appends to a list; a background task commits
batches every `flush_interval_ms` (or sooner when `flush_max_rows` wait) with ON CONFLICT DO NOTHING on
(request_id, kind), so replaying a settlement is a no-op. A failed commit keeps its rows and retries.
On a clean shutdown `close()` commits everything that was acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from margin.ledger.models import ledger

log = logging.getLogger("margin.ledger")


class LedgerWriter:
    def __init__(self, engine: AsyncEngine, *, interval_s: float = 0.05, max_rows: int = 500) -> None:
        self._engine = engine
        self._interval_s = interval_s
        self._max_rows = max_rows
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.written = 0
        self.failures = 0
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        self._insert = dialect.insert(ledger).on_conflict_do_nothing(index_elements=["request_id", "kind"])

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, row: dict[str, Any]) -> None:
        self._pending.append(row)
        if len(self._pending) >= self._max_rows:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval_s)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> int:
        """Commit what is pending now; returns the number of rows handed to the database."""
        async with self._lock:
            if not self._pending:
                return 0
            batch, self._pending = self._pending, []
            try:
                async with self._engine.begin() as connection:
                    await connection.execute(self._insert, batch)
            except Exception:
                self.failures += 1
                self._pending = batch + self._pending
                log.exception("ledger flush of %d rows failed; will retry", len(batch))
                return 0
            self.written += len(batch)
            return len(batch)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        for _ in range(3):
            await self.flush()
            if not self._pending:
                return
            await asyncio.sleep(0.2)
        log.error("ledger: %d rows could not be written at shutdown", len(self._pending))
