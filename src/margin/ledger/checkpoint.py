"""WAL checkpoints of the ledger's SQLite file, off the ingester's path.

SQLite in WAL mode copies the log's pages back into the database file ("checkpoints") in the commit of the
transaction that makes the log pass 1,000 pages: a batch of ~26,000 ledger rows writes several times that, so
every batch's commit did one. The ingester's connections turn that off (`wal_autocheckpoint=0`) and ask this
thread, on a connection of its own, for a PASSIVE checkpoint after each commit: it copies what no reader still
needs while the next batch is staged and appended (PASSIVE never waits for, nor blocks, a writer or a reader).
The commits stay durable in the log meanwhile; a process that dies leaves the log to the next one that opens the
file, as always. Other connections (the gateway's) keep SQLite's own automatic checkpoints.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import Any

log = logging.getLogger("margin.ledger")


class Checkpointer:
    """A thread that checkpoints `path` (a SQLite file in WAL mode) when `kick`ed."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="ledger-checkpoint", daemon=True)
        self._thread.start()
        self.checkpoints = 0

    @staticmethod
    def manual(dbapi_connection: Any, _record: Any = None) -> None:
        """An engine's `connect` listener: this connection's commits leave checkpoints to the thread."""
        dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")

    def kick(self) -> None:
        """A batch was committed: checkpoint soon (several kicks meanwhile make one checkpoint)."""
        self._wake.set()

    def _run(self) -> None:
        connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            connection.execute("PRAGMA busy_timeout=5000")
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error as exc:  # busy, or the disk: the next kick tries again
                    log.warning("ledger checkpoint failed (%s); retried after the next batch", exc)
        finally:
            connection.close()

    def close(self) -> None:
        """One last checkpoint is not needed (the log is the durable copy); end the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join()
