"""The outbox ingester: a thread that moves whole lines from outbox files into the ledger, off the request path.

Each pass reads, for every file it is responsible for, the bytes after its committed offset up to the last
complete line (a line still being written, or torn by a crash, is not read), in reads of `batch_bytes`, and
hands them to margin.ledger.batch, which commits the rows and the new offset in one transaction; each batch goes
with the next one's lines, which the sink stages meanwhile (margin.ledger.stager). Per row it
does nothing in Python: the bytes are joined into one JSON array and parsed by the database, and the thread
spends its time in the database driver (which releases the GIL) and in C-level bytes operations.

It is responsible for this process's own files and for those of dead processes (margin.ledger.segments): it
looks for them at start and every `rescan_s`, takes their lock, resumes them from their committed offset and
deletes them once read to the end (a torn last line, never acknowledged, is dropped with a warning). Own
files are deleted as soon as they are closed and wholly ingested.

When the database is unreachable, a pass fails, nothing is lost (the rows stay in the files) and the next pass
retries. `fsync` (policy `interval`) runs here too, so the request path never waits on the disk.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from margin.ledger.batch import Cursor, RowsRefused
from margin.ledger.segments import LOCK_SUFFIX, OwnerLock, abandoned, list_segments

log = logging.getLogger("margin.ledger")
MAX_LINE_BYTES = 1 << 30  # a line longer than this is damage, not a row


class Sink(Protocol):
    """Where batches go: margin.ledger.batch.BatchSink in this thread, or margin.ledger.sink_process.RemoteSink
    (the same calls, made in a child process)."""

    def start(self) -> None: ...

    def committed(self, segment: str) -> tuple[int, int]: ...

    def forget(self, segment: str) -> None: ...

    def move(self, cursor: Cursor, lines: bytes, rows: int, ahead: bytes = b"") -> None: ...

    def move_each(self, cursor: Cursor, lines: bytes) -> None: ...

    def close(self) -> None: ...


class OwnFiles(Protocol):
    """The writer's side, as the ingester sees it (margin.ledger.outbox.SegmentWriter)."""

    owner: str

    def take_sealed(self) -> list[tuple[str, int]]: ...

    def current(self) -> tuple[str, int] | None: ...

    def sync(self) -> None: ...


@dataclass
class _Segment:
    cursor: Cursor
    owner: str
    own: bool
    size: int = 0  # bytes known to be in the file
    sealed: bool = False  # no byte will be added
    backlog_rows: int = 0  # not yet moved (files of dead processes only: counted when adopted)
    fd: int | None = None


@dataclass
class IngestStats:
    own_rows: int = 0  # rows of this process's files moved (inserted, dropped as replays, or set aside)
    own_bytes: int = 0
    adopted_rows: int = 0  # rows of dead processes' files not yet moved
    adopted_bytes: int = 0
    inserted: int = 0  # rows appended to the ledger
    dead_letters: int = 0
    failures: int = 0  # passes that failed (database unreachable)
    torn_bytes: int = 0  # incomplete last lines of dead processes' files, dropped
    scans: int = 0  # looks for dead processes' files done (the first at start): their rows are in adopted_rows
    last_error: str | None = None
    last_ok: float = field(default_factory=time.time)


POLL_S = 0.05  # how often the ingester looks at the outbox files at most


class Ingester:
    def __init__(
        self,
        sink: Sink,
        directory: Path,
        own: OwnFiles,
        *,
        interval_s: float = 0.05,
        batch_bytes: int = 16 * 1024 * 1024,
        fsync_interval_s: float | None = None,
        rescan_s: float = 2.0,
        min_batch_bytes: int = 2 * 1024 * 1024,
    ) -> None:
        self._sink = sink
        self._dir = directory
        self._own = own
        self._interval_s = min(interval_s, POLL_S)
        self._batch_bytes = batch_bytes
        self._fsync_interval_s = fsync_interval_s
        self._rescan_s = rescan_s
        # a batch has a fixed cost (one transaction, the rollup statements) and its rows share the rollups'
        # groups: the ingester looks every POLL_S (or `interval_s` if shorter) and moves rows once
        # `min_batch_bytes` wait or the oldest has waited `interval_s` (a flush, a stop move them at once).
        # 2 MB: up to ~2,000 requests/s a batch is a second of traffic (CPU a row of the report mix, ingest.py:
        # 200 µs in 256 KB batches, 127 in 1 MB, 105 in 2 MB, 77 in 16 MB)
        self._max_delay_s = interval_s
        self._min_batch_bytes = min_batch_bytes
        self._last_pass = 0.0
        self._segments: dict[str, _Segment] = {}
        self._recovering: dict[str, OwnerLock] = {}  # dead owners whose lock this process holds
        self._forget: list[str] = []  # offsets of deleted files still to remove
        self._waiting: list[concurrent.futures.Future[int]] = []
        self._guard = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stats = IngestStats()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ledger-ingester", daemon=True)
        self._thread.start()

    def request_pass(self) -> concurrent.futures.Future[int]:
        """A pass that starts after this call; its result is the rows it moved (-1 when it failed)."""
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        with self._guard:
            self._waiting.append(future)
        self._wake.set()
        return future

    def stop(self) -> None:
        """One last pass, then the thread ends (blocking: call it from a thread)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self._guard:  # asked for after the last pass began: there is no pass to wait for
            waiting, self._waiting = self._waiting, []
        for future in waiting:
            _resolve(future, 0)
        for segment in self._segments.values():
            if segment.fd is not None:
                os.close(segment.fd)
        for lock in self._recovering.values():
            lock.release(remove=False)
        self._sink.close()

    def _run(self) -> None:
        try:
            self._sink.start()  # a child process starts while the gateway does its own start-up
        except Exception as exc:  # retried by the first batch
            log.error("ledger ingest could not start (%s); retrying with the first batch", exc)
        delay, synced, next_scan = self._interval_s, time.monotonic(), 0.0
        while True:
            self._wake.wait(timeout=delay)
            self._wake.clear()
            with self._guard:
                waiting, self._waiting = self._waiting, []
            stopping, moved = self._stopping, 0
            try:
                if self._fsync_interval_s is not None and time.monotonic() - synced >= self._fsync_interval_s:
                    synced = time.monotonic()
                    self._own.sync()
                if time.monotonic() >= next_scan:
                    self._adopt()
                    self.stats.scans += 1
                    next_scan = time.monotonic() + self._rescan_s
                self._follow_own()
                if waiting or stopping or self._due():
                    moved = self._pass()
                delay = self._interval_s
                self.stats.last_ok = time.time()
                self.stats.last_error = None
            except Exception as exc:  # the database is away (or the disk): the rows stay in the files
                moved = -1
                self.stats.failures += 1
                if self.stats.last_error != str(exc):
                    log.error("ledger ingest failed (%s); the rows stay in the outbox and will be retried", exc)
                self.stats.last_error = str(exc)
                delay = min(1.0, max(delay * 2, self._interval_s))
            finally:
                for future in waiting:
                    _resolve(future, moved)
            if stopping:
                return

    def _due(self) -> bool:
        """Enough waits for a batch, or the oldest waiting row has waited `max_delay_s`."""
        waiting = sum(segment.size - segment.cursor.offset for segment in self._segments.values())
        if waiting <= 0:
            self._last_pass = time.monotonic()  # nothing waits: the delay counts from the next row on
            return False
        return waiting >= self._min_batch_bytes or time.monotonic() - self._last_pass >= self._max_delay_s

    def _pass(self) -> int:
        self._last_pass = time.monotonic()
        for name in list(self._forget):
            self._sink.forget(name)
            self._forget.remove(name)
        moved, segments = 0, list(self._segments.values())
        for i, segment in enumerate(segments):
            moved += self._drain(segment, segments[i + 1] if i + 1 < len(segments) else None)
            if segment.sealed and not self._whole_line_left(segment):
                self._retire(segment)
        for owner in [o for o in self._recovering if not any(s.owner == o for s in self._segments.values())]:
            self._recovering.pop(owner).release(remove=True)
        return moved

    def _follow_own(self) -> None:
        for name, size in self._own.take_sealed():
            segment = self._segments.setdefault(name, _Segment(Cursor(name), self._own.owner, own=True))
            segment.size, segment.sealed = size, True
        current = self._own.current()
        if current is not None:
            name, size = current
            self._segments.setdefault(name, _Segment(Cursor(name), self._own.owner, own=True)).size = size

    def _adopt(self) -> None:
        """Take over the files of processes that died (their lock is free), from their committed offsets."""
        busy: set[str] = set()
        owners = set()
        for found in list_segments(self._dir):
            owners.add(found.owner)
            if found.owner == self._own.owner or found.name in self._segments or found.owner in busy:
                continue
            if found.owner not in self._recovering:
                lock = abandoned(self._dir, found.owner)
                if lock is None:
                    busy.add(found.owner)
                    continue
                self._recovering[found.owner] = lock
                log.warning("ledger outbox: ingesting the files left by process %s", found.owner)
            offset, rows = self._sink.committed(found.name)
            segment = _Segment(Cursor(found.name, offset, rows), found.owner, own=False, sealed=True)
            segment.size = os.path.getsize(self._dir / found.name)
            segment.backlog_rows = self._count_lines(segment)
            self.stats.adopted_rows += segment.backlog_rows
            self.stats.adopted_bytes += segment.size - offset
            self._segments[found.name] = segment
        self._clear_stale_locks(owners)

    def _clear_stale_locks(self, owners: set[str]) -> None:
        """Lock files of dead processes that left no file (e.g. killed before their first row)."""
        for entry in os.scandir(self._dir):
            owner = entry.name.removesuffix(LOCK_SUFFIX)
            if not entry.name.endswith(LOCK_SUFFIX) or owner in owners or owner in self._recovering:
                continue
            if owner != self._own.owner and (lock := abandoned(self._dir, owner)) is not None:
                lock.release(remove=True)

    def _fd(self, segment: _Segment) -> int:
        if segment.fd is None:
            segment.fd = os.open(self._dir / segment.cursor.segment, os.O_RDONLY)
        return segment.fd

    def _count_lines(self, segment: _Segment) -> int:
        count, offset = 0, segment.cursor.offset
        while offset < segment.size:
            chunk = os.pread(self._fd(segment), min(self._batch_bytes, segment.size - offset), offset)
            if not chunk:
                break
            count += chunk.count(b"\n")
            offset += len(chunk)
        return count

    def _read(self, segment: _Segment, offset: int) -> bytes:
        """Whole lines from `offset`: up to `batch_bytes`, or one longer line; b"" if none. What is left of the
        file is cut in batches of even size (a file of 4.1 batches is read as 5 of 0.82, not 4 and a sliver),
        so the batch staged ahead is never waited for behind a sliver appended at once (benchmarks/README.md)."""
        left = segment.size - offset
        if left <= 0:
            return b""
        want = -(-left // -(-left // self._batch_bytes))  # ceil(left / ceil(left / batch_bytes))
        while True:
            data = os.pread(self._fd(segment), want, offset)
            end = data.rfind(b"\n") + 1
            if end or want >= left or want >= MAX_LINE_BYTES:
                return data[:end]
            want = min(want * 2, left)

    def _whole_line_left(self, segment: _Segment) -> bool:
        left = segment.size - segment.cursor.offset
        if left <= 0:
            return False
        tail = os.pread(self._fd(segment), min(left, MAX_LINE_BYTES), segment.cursor.offset)
        if b"\n" in tail:
            return True
        log.warning(
            "ledger outbox: dropping %d bytes of an incomplete last row in %s (its writer died writing it; that "
            "request was never answered)",
            len(tail),
            segment.cursor.segment,
        )
        self.stats.torn_bytes += len(tail)
        return False

    def _drain(self, segment: _Segment, following: _Segment | None = None) -> int:
        """Move the whole lines after the committed offset, batch by batch; each batch goes with the next one's
        lines (`ahead`), which the sink may stage meanwhile (margin.ledger.stager): the last batch of a file
        with the first of the `following` file, so a backlog of many files is staged ahead throughout."""
        cursor, moved = segment.cursor, 0
        lines = self._read(segment, cursor.offset)
        while lines:
            rows, offset, inserted, letters = cursor.rows, cursor.offset, cursor.inserted, cursor.dead_letters
            after = self._read(segment, offset + len(lines))
            ahead = after
            if not after and following is not None:  # only a hint: the sink stages bytes, whatever file they are
                ahead = self._read(following, following.cursor.offset)
            try:
                try:
                    self._sink.move(cursor, lines, lines.count(b"\n"), ahead)
                except RowsRefused as exc:
                    log.warning("ledger batch of %d bytes refused (%s); moving it row by row", len(lines), exc)
                    self._sink.move_each(cursor, lines)
            finally:
                done_rows, done_bytes = cursor.rows - rows, cursor.offset - offset
                moved += done_rows
                self.stats.inserted += cursor.inserted - inserted
                self.stats.dead_letters += cursor.dead_letters - letters
                if segment.own:
                    self.stats.own_rows += done_rows
                    self.stats.own_bytes += done_bytes
                else:
                    segment.backlog_rows -= done_rows
                    self.stats.adopted_rows -= done_rows
                    self.stats.adopted_bytes -= done_bytes
            lines = after if cursor.offset == offset + len(lines) else self._read(segment, cursor.offset)
        return moved

    def _retire(self, segment: _Segment) -> None:
        """A sealed file read to its end: delete it, then its offset row (a crash in between re-reads it: the
        rows are dropped as replays)."""
        name = segment.cursor.segment
        if segment.fd is not None:
            os.close(segment.fd)
            segment.fd = None
        (self._dir / name).unlink(missing_ok=True)
        del self._segments[name]
        if not segment.own:
            self.stats.adopted_bytes -= segment.size - segment.cursor.offset  # the torn tail
        self._forget.append(name)
        self._sink.forget(name)
        self._forget.remove(name)


def _resolve(future: concurrent.futures.Future[int], moved: int) -> None:
    """A waiter's pass result, unless it stopped waiting (cancelled: a flush under a timeout, a client gone).
    Setting a cancelled future raises: it escaped the pass loop and ended the ingest thread, the ledger took no
    row after it and every later flush waited forever."""
    if future.set_running_or_notify_cancel():
        future.set_result(moved)
