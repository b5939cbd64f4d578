"""Batched, idempotent ledger writes.

The request path only appends a row to a list. A background task hands batches (every `flush_interval_ms`,
or sooner when `flush_max_rows` wait) to a sink on one writer thread, so the event loop never waits on the
database. Each batch goes through margin.ledger.ingest.ingest_batch: rows already in the ledger (same
request_id and kind) are dropped, so replaying a settlement is a no-op, and the rollups are updated in the
same transaction. A failed write keeps its rows and retries; `close()` writes everything acknowledged before
shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import sqlalchemy as sa

from margin.ledger import db
from margin.ledger.ingest import ingest

log = logging.getLogger("margin.ledger")


class Sink(Protocol):
    def write(self, rows: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class EngineSink:
    """Writes each batch through margin.ledger.ingest (staging table, dedup, append, rollups) in one
    transaction, on SQLite and PostgreSQL alike. The engine is the gateway's own (Services owns one per
    database) or, without one, made here from the URL."""

    def __init__(self, url: str, engine: sa.Engine | None = None) -> None:
        self._owned = engine is None
        self._engine = engine if engine is not None else db.make_sync_engine(url)

    def write(self, rows: list[dict[str, Any]]) -> None:
        ingest(self._engine, rows)

    def close(self) -> None:
        if self._owned:
            self._engine.dispose()


def make_sink(url: str, engine: sa.Engine | None = None) -> Sink:
    return EngineSink(url, engine)


class LedgerWriter:
    def __init__(
        self, url: str, *, interval_s: float = 0.05, max_rows: int = 500, engine: sa.Engine | None = None
    ) -> None:
        self._url = url
        self._engine = engine
        self._sink: Sink | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        self._interval_s = interval_s
        self._max_rows = max_rows
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.written = 0
        self.failures = 0

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

    def _write(self, batch: list[dict[str, Any]]) -> None:
        if self._sink is None:
            self._sink = make_sink(self._url, self._engine)
        self._sink.write(batch)

    async def flush(self) -> int:
        """Write what is pending now; returns the number of rows handed to the database."""
        async with self._lock:
            if not self._pending:
                return 0
            batch, self._pending = self._pending, []
            try:
                await asyncio.get_running_loop().run_in_executor(self._thread, self._write, batch)
            except Exception:
                self.failures += 1
                self._pending = batch + self._pending
                log.exception("ledger write of %d rows failed; will retry", len(batch))
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
                break
            await asyncio.sleep(0.2)
        else:
            log.error("ledger: %d rows could not be written at shutdown", len(self._pending))
        if self._sink is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._sink.close)
        self._thread.shutdown(wait=True)
