"""The ledger outbox: acknowledged means recorded.

The request path appends each finished request's row to a local append-only file, as one JSON line written
with a single `os.write` on an `O_APPEND` descriptor, before the response's last byte leaves (JSON: before the
body; streams: before the closing `[DONE]`). Once `write()` returns, the row is in the kernel's page cache: it
survives `kill -9` of the process. A power cut is `storage.outbox_fsync`'s business: `never` (the default),
`interval` (fdatasync every `outbox_fsync_interval_ms`, from the ingester's thread) or `always` (every row, on
the request path: a disk flush per request).

An ingester thread (margin.ledger.ingester) moves the rows into the database in large batches, its SQL run in
a child process when `ingest_in="process"` (margin.ledger.sink_process; the gateway's default,
`storage.ingest_in`) or in the thread itself (this class's default: tools and tests), and commits its
offset in each file with them, so a restart resumes where it stopped and a replay is a no-op. Each process
writes its own files, named after it (margin.ledger.segments), and the files of a process that died are
ingested by the next one to start (or by a sibling worker within `rescan_s`).

Back-pressure: `full` is true while more than `max_rows` rows or `max_bytes` bytes wait in this process's
outbox (the database is down or too slow); admission then refuses new requests with 503, so neither memory nor
disk grows without bound.

    outbox = Outbox.from_settings(settings.storage)
    outbox.start()
    outbox.append(row)     # sync, a few µs: what settling a request does
    outbox.depth, outbox.full
    await outbox.flush()   # wait until what was appended so far is in the database (tests, feedback)
    await outbox.close()   # ingest what is left, then stop
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import orjson
import sqlalchemy as sa

from margin.config import StorageConfig
from margin.errors import Overloaded
from margin.ledger import db
from margin.ledger.batch import BatchSink
from margin.ledger.ingester import Ingester
from margin.ledger.segments import OwnerLock, default_directory, new_owner, segment_name, sync_directory
from margin.ledger.sink_process import RemoteSink

log = logging.getLogger("margin.ledger")
Fsync = Literal["never", "interval", "always"]
IngestIn = Literal["process", "thread"]
_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_DATETIME


class OutboxError(Overloaded):
    """The row could not be written to the outbox (disk full, outbox closed): the request is not recorded
    and must not be acknowledged."""

    default_code = "ledger_unavailable"


@dataclass(frozen=True, slots=True)
class Depth:
    rows: int  # appended (or left by dead processes) and not yet in the database
    bytes: int


def _default(value: Any) -> Any:
    if isinstance(value, datetime):  # UTC, microseconds always: 2026-11-23 12:30:05.123456+00:00
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return aware.isoformat(sep=" ", timespec="microseconds")
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode(row: dict[str, Any]) -> bytes:
    """One outbox line. A column that is null is left out (the ingest reads a missing key as NULL, and lines
    written with explicit nulls still read the same): a typical row has ~20 of its ~50 columns null, so the
    line is ~40 % shorter and the database parses it ~35 % faster (benchmarks/ingest.py), for ~1.4 µs here.
    An integer beyond 64 bits (orjson refuses it) is written as JSON anyway: the database refuses it and the
    row goes to the dead-letter table, which is where such a row belongs."""
    present = {name: value for name, value in row.items() if value is not None}
    try:
        return orjson.dumps(present, default=_default, option=_OPTIONS)
    except TypeError:
        text = json.dumps(present, default=_default, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8", "surrogatepass") + b"\n"


class SegmentWriter:
    """This process's outbox files: appends lines to the current one and starts a new one past
    `segment_bytes`. Thread-safe (the ingester thread fsyncs and looks at sizes)."""

    def __init__(self, directory: Path, *, segment_bytes: int, fsync: Fsync) -> None:
        self.directory = directory
        self.owner = new_owner()
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._lock = OwnerLock(directory, self.owner)
        self._guard = threading.Lock()
        self._fd: int | None = None
        self._seq = 0
        self._name = ""
        self._size = 0
        self._dirty = False
        self._sealed: list[tuple[str, int]] = []
        self._closed = False
        self.os_write, self.os_open = os.write, os.open  # the system calls (tests fail them as a full disk would)
        self.rows = 0  # appended since start
        self.bytes = 0

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self._lock.acquire(create=True):
            raise OSError(f"cannot lock {self._lock.path}")
        self._open_segment()

    def _open_segment(self) -> None:
        self._name = segment_name(self.owner, self._seq)
        self._seq += 1  # a name is tried once: a file created by a try that failed after is never reopened
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self._fd = self.os_open(self.directory / self._name, flags, 0o600)
        self._size = 0
        if self._fsync != "never":
            sync_directory(self.directory)

    def write(self, line: bytes) -> None:
        """Append one whole line, or raise OSError with none of it in the file as the ingester reads it: a line
        cut short (a full disk) or not synced (policy `always`) is cut off again (`_abandon`). A file that could
        not be opened (no inodes) is tried again by the next write, never given up on."""
        with self._guard:
            if self._closed:
                raise OutboxError("the ledger outbox is closed")
            if self._fd is None:
                self._open_segment()
            fd, written = self._fd, 0
            assert fd is not None
            try:
                view = memoryview(line)
                while written < len(line):  # a regular file takes it in one write; a short one continues it
                    written += self.os_write(fd, view[written:])
                if self._fsync == "always":
                    os.fdatasync(fd)
            except OSError:
                self._abandon(fd, written)
                raise
            self._size += written
            self.rows += 1
            self.bytes += written
            self._dirty = self._fsync != "always"
            if self._size >= self._segment_bytes:
                self._rotate()

    def _abandon(self, fd: int, written: int) -> None:
        """After a failed write: cut off what it left (the file goes on from its last whole line); a file that
        cannot be cut is sealed at that line, so nothing is glued to the fragment and it is never read."""
        if not written:
            return
        try:
            os.ftruncate(fd, self._size)
        except OSError:
            with contextlib.suppress(OSError):
                self._seal()

    def _rotate(self) -> None:
        """The current file is full: seal it and start the next one. The row that filled it is written, so a
        failure here does not fail that row; the next write opens a file (or refuses its own row)."""
        try:
            self._seal()
            self._open_segment()
        except OSError as exc:
            log.error("ledger outbox: could not start a new file (the next row tries again): %s", exc)

    def _seal(self) -> None:
        fd, self._fd = self._fd, None
        assert fd is not None
        try:
            if self._fsync != "never" and self._dirty:
                os.fdatasync(fd)
        finally:
            self._dirty = False
            self._sealed.append((self._name, self._size))
            os.close(fd)

    def take_sealed(self) -> list[tuple[str, int]]:
        """Files closed since the last call (name, final size)."""
        with self._guard:
            sealed, self._sealed = self._sealed, []
            return sealed

    def current(self) -> tuple[str, int] | None:
        with self._guard:
            return (self._name, self._size) if self._fd is not None else None

    def sync(self) -> None:
        """fdatasync the current file (policy `interval`, from the ingester's thread). On a duplicate of the
        descriptor, outside the lock: appends never wait for the disk."""
        with self._guard:
            if self._fd is None or not self._dirty:
                return
            fd, self._dirty = os.dup(self._fd), False
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """No more rows: the current file is closed (and handed to the ingester as sealed)."""
        with self._guard:
            self._closed = True
            if self._fd is not None:
                self._seal()

    def release(self, *, remove: bool) -> None:
        """Give up the lock; `remove` when every file is ingested and gone. Otherwise the lock file stays,
        unlocked, and the next process to start ingests the files."""
        self._lock.release(remove=remove)


def _sink(url: str, engine: sa.Engine | None, ingest_in: IngestIn, stage_ahead: bool) -> BatchSink | RemoteSink:
    """The database side of ingestion: a child process (margin.ledger.sink_process), unless told otherwise or
    the ledger lives in this process's memory (or a caller hands its own engine: tests)."""
    in_memory = url.startswith("sqlite") and db.sqlite_file(url) is None
    if ingest_in == "thread" or in_memory or engine is not None:
        return BatchSink(url, engine, stage_ahead=stage_ahead)
    return RemoteSink(url, stage_ahead=stage_ahead)


class Outbox:
    def __init__(
        self,
        url: str,
        directory: Path | None = None,
        *,
        engine: sa.Engine | None = None,
        interval_s: float = 0.05,
        batch_bytes: int = 16 * 1024 * 1024,
        segment_bytes: int = 64 * 1024 * 1024,
        max_rows: int = 100_000,
        max_bytes: int = 1024 * 1024 * 1024,
        fsync: Fsync = "never",
        fsync_interval_s: float = 1.0,
        rescan_s: float = 2.0,
        ingest_in: IngestIn = "thread",
        stage_ahead: bool = True,
    ) -> None:
        self.directory = directory or default_directory(url)
        self._writer = SegmentWriter(self.directory, segment_bytes=segment_bytes, fsync=fsync)
        self._sink = _sink(url, engine, ingest_in, stage_ahead)
        self._ingester = Ingester(
            self._sink,
            self.directory,
            self._writer,
            interval_s=interval_s,
            batch_bytes=batch_bytes,
            fsync_interval_s=fsync_interval_s if fsync == "interval" else None,
            rescan_s=rescan_s,
        )
        self._max_rows = max_rows
        self._max_bytes = max_bytes
        self._started = self._closed = False
        self.write_errors = 0

    @classmethod
    def from_settings(cls, storage: StorageConfig, engine: sa.Engine | None = None) -> Outbox:
        return cls(
            storage.ledger,
            Path(storage.outbox_dir).expanduser() if storage.outbox_dir else None,
            engine=engine,
            interval_s=storage.flush_interval_ms / 1000,
            batch_bytes=storage.ingest_batch_bytes,
            segment_bytes=storage.outbox_segment_bytes,
            max_rows=storage.max_pending_rows,
            max_bytes=storage.outbox_max_bytes,
            fsync=storage.outbox_fsync,
            fsync_interval_s=storage.outbox_fsync_interval_ms / 1000,
            ingest_in=storage.ingest_in,
            stage_ahead=storage.ingest_stage_ahead,
        )

    @property
    def owner(self) -> str:
        return self._writer.owner

    def append(self, row: dict[str, Any]) -> None:
        """Write the row to the outbox (returns once the kernel has it). Raises OutboxError when it could
        not: the request is then not recorded and must not be acknowledged."""
        try:
            self._writer.write(encode(row))
        except OSError as exc:
            self.write_errors += 1
            log.error("ledger outbox write failed: %s", exc)
            raise OutboxError(f"the ledger outbox cannot be written ({exc.strerror or exc})") from exc

    def _pending(self) -> tuple[int, int]:
        """Rows and bytes appended (or left by dead processes) and not yet in the database."""
        stats, writer = self._ingester.stats, self._writer
        return writer.rows - stats.own_rows + stats.adopted_rows, writer.bytes - stats.own_bytes + stats.adopted_bytes

    @property
    def depth(self) -> Depth:
        return Depth(*self._pending())

    @property
    def full(self) -> bool:
        """Back-pressure: too much waits for the database; new requests should be refused (503). Read on every
        request: the sums without the `Depth` value (a frozen dataclass: ~1 µs)."""
        rows, size = self._pending()
        return rows >= self._max_rows or size >= self._max_bytes

    def start(self) -> None:
        self._writer.open()
        self._ingester.start()
        self._started = True

    async def flush(self) -> int:
        """Wait for an ingest pass that started after this call; returns the rows it moved (0 if the
        database was unreachable)."""
        if not self._started or self._closed:
            return 0
        return max(await asyncio.wrap_future(self._ingester.request_pass()), 0)

    async def flush_ok(self) -> bool:
        """As `flush`: whether the pass reached the database (False: it failed, or the outbox is not running), so
        that a reader of the ledger knows the rows appended before the call are in it."""
        if not self._started or self._closed:
            return False
        return await asyncio.wrap_future(self._ingester.request_pass()) >= 0

    async def caught_up(self) -> bool:
        """Whether every row appended so far (and every row of the dead processes' files found) is in the
        database, as a new budget counter is made from the ledger (margin.governance.service): True at once when
        none waits (once the ingester has looked for dead processes' files: before, a start after `kill -9` would
        count none of the killed process' rows), False at once when the ingester's last pass failed and none has
        succeeded since (the database away, locked or refusing: a request waited for another pass, up to 10 s, to
        be refused all the same), else `flush_ok`. Only for a counter's first request: a failed last pass may be
        stale (the database just back), so the counter store's restart path waits for a pass (`flush_ok`)."""
        if not self._started or self._closed:
            return False
        if self._ingester.stats.scans and self._pending()[0] <= 0:
            return True
        if self._ingester.stats.last_error is not None:
            return False
        return await self.flush_ok()

    async def close(self) -> None:
        """Stop taking rows, ingest what is left (a few tries), stop the ingester. Rows the database did not
        take stay in the outbox for the next start."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._writer.close()
        for _ in range(3):
            await self.flush()
            if self.depth.rows <= 0:
                break
            await asyncio.sleep(0.2)
        left = self.depth.rows
        self._closed = True
        await asyncio.to_thread(self._ingester.stop)
        if left > 0:
            log.error("ledger: %d rows stay in the outbox %s; the next start ingests them", left, self.directory)
        self._writer.release(remove=left <= 0)

    def stats(self) -> dict[str, Any]:
        """For /healthz and /metrics."""
        depth, stats = self.depth, self._ingester.stats
        return {
            "outbox_rows": depth.rows,
            "outbox_bytes": depth.bytes,
            "full": self.full,
            "appended": self._writer.rows,
            "appended_bytes": self._writer.bytes,
            "written": stats.inserted,
            "failed_flushes": stats.failures,
            "dead_letters": stats.dead_letters,
            "write_errors": self.write_errors,
            "torn_bytes": stats.torn_bytes,
            "last_ingest_at": stats.last_ok,
            "last_error": stats.last_error,
            "ingest_pid": self._sink.pid,
            "ingest_starts": self._sink.starts,
        }
