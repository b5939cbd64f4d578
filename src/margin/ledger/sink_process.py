"""The ledger's database work in a process of its own, so it never takes the gateway's GIL.

The ingester thread (margin.ledger.ingester) keeps everything it owns: the outbox files, their locks, the
cursors, adoption of dead processes' files, fsync, back-pressure counts. Only its `BatchSink` calls (the SQL
of a batch: staging, dedup, the append, ~25 rollup statements through SQLAlchemy) run here, in a child process
started with the ingester: `python -m margin.ledger.sink_process <fd>`, talking over a private socket pair.

Why: measured in one gateway under 500 RPS (benchmarks/gateway_sweep.py, JSON), the thread's Python between
SQL statements held the GIL long enough to add ~3 ms to margin's p99 (4.6 / 3.8 ms with the thread, 1.07 /
0.91 ms with ingestion switched off); SQLite itself releases the GIL, SQLAlchemy's per-statement Python does
not. The batch's bytes are sent to the child as they were read (~0.5 MB a batch at 500 RPS: one copy). A
batch sent before as the previous call's `ahead` (the lines the child stages meanwhile) is not sent again:
the child keeps the last `ahead` it was given, and the call says "those" (`None`) instead of the bytes.

Failure modes, all ending where a crash of the old thread ended:
- the child dies (or cannot start, or cannot open the ledger): the call raises, the ingester counts a failed
  pass and retries later, and a new child is started by a later call, after 1 s, then 2, 4, … up to 30 s while
  children keep failing (no restart loop); the rows stay in the files;
- the gateway dies (`kill -9`): the child reads end-of-file on its socket and exits, after the transaction it
  is in commits or rolls back; the next process to start adopts the files from their committed offsets;
- a call the child was answering when it died: its transaction either committed with its offset or did not,
  so the retry moves the same lines again, and the ledger drops the replayed ones by request id.

`thread` mode (`storage.ingest_in: thread`, and always for an in-memory SQLite ledger) keeps the
`BatchSink` in the ingester's thread: no second process.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from margin.ledger.batch import BatchSink, Cursor, RowsRefused

log = logging.getLogger("margin.ledger")
START_TIMEOUT_S = 60.0  # a first call waits this long for the child's answer to `open`
STOP_TIMEOUT_S = 10.0
RESTART_BACKOFF_S = (1.0, 30.0)  # after a child failed: the first wait before another, and the longest
_CURSOR = ("segment", "offset", "rows", "inserted", "dead_letters")


class SinkUnavailable(Exception):
    """The ingest process is gone or could not be started: the batch stays in the outbox, retried later."""


class SinkFailed(Exception):
    """The database failed the call (unreachable, busy): the batch stays in the outbox, retried later."""


def _fields(cursor: Cursor) -> tuple[Any, ...]:
    return tuple(getattr(cursor, name) for name in _CURSOR)


def _update(cursor: Cursor, fields: tuple[Any, ...]) -> None:
    for name, value in zip(_CURSOR, fields, strict=True):
        setattr(cursor, name, value)


class RemoteSink:
    """BatchSink's interface, carried out by a child process: started with the ingester (or by the first call),
    again after it died, with a growing wait (1 s, doubling, at most 30 s) while children keep failing. Calls
    come from the one ingester thread; a lock keeps them one at a time anyway."""

    def __init__(self, url: str, *, stage_ahead: bool = True) -> None:
        self._url = url
        self._stage_ahead = stage_ahead
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self.starts = 0  # children started (more than 1: some died)
        self._failures = 0  # children in a row that died or could not open the ledger
        self._not_before = 0.0  # no new child before this (monotonic): a failing one is not restarted in a loop
        self._why = ""  # what the last failed child said or did
        self._held = b""  # the last `ahead` the running child took, which it keeps: sent as None next time

    @property
    def pid(self) -> int | None:
        """The child's process id while one runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start(self) -> None:
        """Start the child now rather than on the first call."""
        with self._lock:
            self._connect()

    def _connect(self) -> None:
        if self._conn is not None:
            return
        if (wait := self._not_before - time.monotonic()) > 0:
            raise SinkUnavailable(f"{self._why}; the next ingest process starts in {wait:.0f} s")
        ours, theirs = socket.socketpair()
        package_root = str(Path(__file__).resolve().parents[2])  # margin's own copy, whatever sys.path says
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p),
        }
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "margin.ledger.sink_process", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C is the gateway's to handle: it stops the child
            )
        except OSError as exc:
            ours.close()
            raise SinkUnavailable(f"the ledger ingest process could not start ({exc})") from exc
        finally:
            theirs.close()
        self.starts += 1
        self._conn = Connection(ours.detach())
        # the URL goes over the socket: it never shows in `ps`
        kind, value, _ = self._exchange("open", self._url, self._stage_ahead, timeout=START_TIMEOUT_S)
        if kind != "ok":
            self._drop(why=f"the ledger ingest process could not open the ledger ({value})")
            raise SinkFailed(self._why)

    def _exchange(self, op: str, *args: Any, timeout: float | None = None) -> tuple[str, Any, Any]:
        conn = self._conn
        assert conn is not None
        try:
            conn.send((op, args))
            if timeout is not None and not conn.poll(timeout):
                raise TimeoutError(f"no answer in {timeout:.0f} s")
            answer: tuple[str, Any, Any] = conn.recv()
        except (EOFError, OSError, TimeoutError) as exc:
            self._drop(why=f"the ledger ingest process is gone ({type(exc).__name__}: {exc})")
            raise SinkUnavailable(self._why) from exc
        return answer

    def _call(self, op: str, *args: Any, cursor: Cursor | None = None) -> Any:
        with self._lock:
            self._connect()
            kind, value, fields = self._exchange(op, *args)
            self._failures = 0
        if cursor is not None and fields is not None:
            _update(cursor, fields)  # what the child did stays done, even when it then failed
        if kind == "refused":
            raise RowsRefused(value)
        if kind == "failed":
            raise SinkFailed(value)
        return value

    def committed(self, segment: str) -> tuple[int, int]:
        offset, rows = self._call("committed", segment)
        return int(offset), int(rows)

    def forget(self, segment: str) -> None:
        self._call("forget", segment)

    def move(self, cursor: Cursor, lines: bytes, rows: int, ahead: bytes = b"") -> None:
        with self._lock:
            held, self._held = self._held, b""  # kept only once the child said it took `ahead`
        sent = None if held and lines == held else lines
        self._call("move", _fields(cursor), sent, rows, ahead, cursor=cursor)
        with self._lock:
            self._held = ahead

    def move_each(self, cursor: Cursor, lines: bytes) -> None:
        self._call("move_each", _fields(cursor), lines, cursor=cursor)

    def _drop(self, *, why: str | None = None) -> None:
        """Close the socket and end the child; `why` it failed, if it did (the next child then waits)."""
        self._held = b""  # a new child holds nothing
        if why is not None:
            self._why = why
            first, longest = RESTART_BACKOFF_S
            self._not_before = time.monotonic() + min(longest, first * 2**self._failures)
            self._failures += 1
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            self._process = None

    def close(self) -> None:
        """Ask the child to close its database connection and exit; kill it if it does not."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self._exchange("close", timeout=STOP_TIMEOUT_S)
            except SinkUnavailable:
                return  # already dropped (killed and reaped)
            if self._process is not None:
                try:
                    self._process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    log.error("the ledger ingest process did not exit; killing it")
            self._drop()


class _Held:
    """The last `ahead` the parent sent: a `move` of those same lines comes as None."""

    def __init__(self) -> None:
        self.lines = b""


def _answer(sink: BatchSink, op: str, args: tuple[Any, ...], held: _Held) -> tuple[str, Any, Any]:
    """One call, as BatchSink would have answered it in the ingester's thread."""
    if op == "committed":
        return "ok", sink.committed(args[0]), None
    if op == "forget":
        sink.forget(args[0])
        return "ok", None, None
    cursor = Cursor(*args[0])
    try:
        if op == "move":
            lines, held.lines = (held.lines if args[1] is None else args[1]), args[3]
            if not lines:
                return "failed", "no lines held from the previous call", _fields(cursor)
            sink.move(cursor, lines, args[2], args[3])
        else:
            sink.move_each(cursor, args[1])
    except RowsRefused as refused:
        return "refused", str(refused), _fields(cursor)
    except Exception as exc:  # the database is away or busy: the ingester retries the batch later
        return "failed", f"{type(exc).__name__}: {exc}", _fields(cursor)
    return "ok", None, _fields(cursor)


def serve(conn: Connection) -> None:
    """The child's loop: `open` first, then one answer per call, until `close` or the parent's end."""
    sink: BatchSink | None = None
    held = _Held()
    try:
        while True:
            try:
                op, args = conn.recv()
            except (EOFError, OSError):
                return  # the gateway is gone: whatever it had not asked for stays in its files
            if op == "open":
                try:
                    sink = BatchSink(args[0], stage_ahead=args[1])
                except Exception as exc:  # e.g. a URL its driver refuses: said to the gateway, which logs it
                    conn.send(("failed", f"{type(exc).__name__}: {exc}", None))
                    return
                conn.send(("ok", None, None))
            elif op == "close":
                conn.send(("ok", None, None))
                return
            elif sink is None:
                conn.send(("failed", "not opened", None))
            else:
                conn.send(_answer(sink, op, args, held))
    finally:
        if sink is not None:
            sink.close()


def main(argv: list[str]) -> None:
    # the gateway ends this child (`close`, or end of file when it dies): a SIGTERM or SIGINT sent to every process
    # at once (systemd's default stop, KillMode=control-group) ended it first, and the gateway's clean shutdown
    # then left the rows it had acknowledged in the outbox instead of the ledger
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s margin ledger-ingest: %(message)s")
    serve(Connection(int(argv[1])))


if __name__ == "__main__":
    main(sys.argv)
