"""Batched, idempotent ledger writes.

The request path only appends a row to a list. A background task hands batches (every `flush_interval_ms`,
or sooner when `flush_max_rows` wait) to a sink on one writer thread, so the event loop never waits on the
database. Each batch goes through margin.ledger.ingest.ingest_batch: rows already in the ledger (same
request_id and kind) are dropped, so replaying a settlement is a no-op, and the rollups are updated in the
same transaction. A write that fails because the database is unreachable keeps its rows and retries; a
batch the database refuses for its content is written row by row, and a row it still refuses goes to the
dead-letter table (margin.ledger.deadletter), so no row can block the ones behind it. The queue is bounded:
past `max_pending` rows, `backlogged` is true and admission refuses new requests (503) until it drains.
`close()` writes everything acknowledged before shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import sqlalchemy as sa

from margin.ledger import db, deadletter
from margin.ledger.ingest import ingest
from margin.ledger.models import ledger_dead_letter

log = logging.getLogger("margin.ledger")


class Sink(Protocol):
    def write(self, rows: list[dict[str, Any]]) -> None: ...

    def dead_letter(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class Requeue(Exception):
    """The database went away in the middle of a row-by-row write: these rows are still to be written."""

    def __init__(self, rows: list[dict[str, Any]], refused: int) -> None:
        super().__init__(f"{len(rows)} rows left")
        self.rows = rows
        self.refused = refused  # rows set aside before the database went away


class EngineSink:
    """Writes each batch through margin.ledger.ingest (staging table, dedup, append, rollups) in one
    transaction, on SQLite and PostgreSQL alike; a refused row goes to `ledger_dead_letter`. The engine is the
    gateway's own (Services owns one per database) or, without one, made here from the URL."""

    def __init__(self, url: str, engine: sa.Engine | None = None) -> None:
        self._owned = engine is None
        self._engine = engine if engine is not None else db.make_sync_engine(url)

    def write(self, rows: list[dict[str, Any]]) -> None:
        ingest(self._engine, rows)

    def dead_letter(self, row: dict[str, Any]) -> None:
        with self._engine.begin() as connection:
            connection.execute(ledger_dead_letter.insert(), [row])

    def close(self) -> None:
        if self._owned:
            self._engine.dispose()


def make_sink(url: str, engine: sa.Engine | None = None) -> Sink:
    return EngineSink(url, engine)


class LedgerWriter:
    def __init__(
        self,
        url: str,
        *,
        interval_s: float = 0.05,
        max_rows: int = 500,
        max_pending: int = 100_000,
        engine: sa.Engine | None = None,
    ) -> None:
        self._url = url
        self._engine = engine
        self._sink: Sink | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        self._interval_s = interval_s
        self._max_rows = max_rows
        self._max_pending = max_pending
        self._pending: list[dict[str, Any]] = []
        self._writing = 0  # rows of the batch the database has now
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.written = 0
        self.failures = 0
        self.dead_letters = 0  # rows the database refused, set aside in ledger_dead_letter
        self.refused = 0  # requests refused while backlogged (they did nothing and get no row)

    @property
    def pending(self) -> int:
        """Rows acknowledged and not yet in the database (waiting, or in the batch being written)."""
        return len(self._pending) + self._writing

    @property
    def backlogged(self) -> bool:
        """The queue is full (the database is down or too slow): new requests wait outside (503)."""
        return self.pending >= self._max_pending

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

    def _write(self, batch: list[dict[str, Any]]) -> int:
        """On the writer thread: the batch at once, else row by row; returns how many rows were set aside."""
        if self._sink is None:
            self._sink = make_sink(self._url, self._engine)
        try:
            self._sink.write(batch)
            return 0
        except Exception as exc:
            if deadletter.is_transient(exc):
                raise
            log.warning("ledger batch of %d rows refused (%s); writing them one by one", len(batch), exc)
        return self._write_each(self._sink, batch)

    @staticmethod
    def _write_each(sink: Sink, batch: list[dict[str, Any]]) -> int:
        refused = 0
        for index, row in enumerate(batch):
            try:
                try:
                    sink.write([row])
                    continue
                except Exception as exc:
                    if deadletter.is_transient(exc):
                        raise
                    error = exc
                salvaged = True
                try:
                    sink.write([deadletter.coerce(row)])
                except Exception as exc:
                    if deadletter.is_transient(exc):
                        raise
                    salvaged = False
                sink.dead_letter(deadletter.dead_letter(row, error, salvaged))
            except Exception as exc:
                raise Requeue(batch[index:], refused) from exc
            refused += 1
            log.error("ledger row %s refused (%s); set aside in ledger_dead_letter", row.get("request_id"), error)
        return refused

    async def flush(self) -> int:
        """Write what is pending now; returns the number of rows handed to the database."""
        async with self._lock:
            if not self._pending:
                return 0
            batch, self._pending = self._pending, []
            self._writing = len(batch)
            try:
                refused = await asyncio.get_running_loop().run_in_executor(self._thread, self._write, batch)
            except Exception as exc:
                self.failures += 1
                left, refused = (exc.rows, exc.refused) if isinstance(exc, Requeue) else (batch, 0)
                self._pending = left + self._pending
                self._writing = 0
                self.dead_letters += refused
                self.written += len(batch) - len(left) - refused
                log.error("ledger write failed (%s); %d rows kept for retry", exc.__cause__ or exc, len(left))
                return len(batch) - len(left)
            self._writing = 0
            self.dead_letters += refused
            self.written += len(batch) - refused
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
