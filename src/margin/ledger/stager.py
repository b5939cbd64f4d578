"""Staging the next batch while the current one is appended (SQLite ledger files).

About half of a batch's CPU needs nothing but the batch's bytes: the JSON fill of the staging table, the integer
check, the rollups' per-row values and their pre-aggregates (margin.ledger.rollup_sql.batch_tables). The other
half reads or writes the ledger: the append, the rollup upserts. So a thread of its own (`ledger-stager`) does
the first half of the *next* batch, on a connection to an in-memory database of its own, while the ingester's
connection does the second half of the current one: a backlog is ingested on two cores instead of one, by the
same statements. SQLite releases the GIL while a statement runs, and the stager runs ~12 statements a batch.

Two in-memory databases (SQLite's `memdb` VFS: shared by name within this process, never a file) take turns:
the stager fills one while the ingester's connection reads the other (each ledger connection attaches both, as
stage0 and stage1). `take(lines)` hands out the database that holds exactly those bytes (waiting for the stager;
staging them first if nobody asked for them with `ahead`); `ahead(lines)` starts the next batch in the other one.
Nothing here is durable or decides anything: a batch the stager could not stage (malformed bytes, too large for
memory) is ingested the serial way on the ledger's connection, which then says why (margin.ledger.batch).
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from typing import Any, NamedTuple

from margin.ledger import db, ingest
from margin.ledger import rollup_sql as sql

SCHEMAS = ("stage0", "stage1")  # the names the ledger's connections attach the two databases by


class Staged(NamedTuple):
    """A staged batch: where the ledger's connection reads it, and what the stager found."""

    schema: str
    rows: int
    refused: str | None = None  # a column that holds an integer beyond 64 bits (the batch is refused)
    failed: str | None = None  # SQLite could not stage it: ingested the serial way instead


def json_array(lines: bytes) -> str:
    """Whole outbox lines (a JSON object each) as one JSON array, the text SQLite's json_each reads."""
    return (b"[" + lines.rstrip(b"\n").replace(b"\n", b",") + b"]").decode("utf-8", "replace")


class _Held(NamedTuple):
    lines: bytes
    tag_keys: tuple[str, ...]
    future: Future[Staged]

    def holds(self, lines: bytes, tag_keys: tuple[str, ...]) -> bool:
        """These bytes, staged with these tag keys (the same object in thread mode, equal bytes from a child's
        socket)."""
        return self.tag_keys == tag_keys and (self.lines is lines or self.lines == lines)


class Stager:
    """Two in-memory staging databases and the thread that fills them (`fill`, `check`: margin.ledger.batch's
    statements for SQLite). Used by one thread at a time (the one that appends)."""

    def __init__(self, fill: str, check: str) -> None:
        self._check_uris()
        self._fill, self._check = fill, check
        tag = f"{os.getpid()}-{uuid.uuid4().hex}"
        self._uris = tuple(f"file:/margin-stage-{tag}-{i}?vfs=memdb" for i in range(len(SCHEMAS)))
        self._connections = [self._open(uri) for uri in self._uris]
        self._held: list[_Held | None] = [None] * len(SCHEMAS)
        self._current = 0  # the database the ledger's connection reads now
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-stager")
        self._tables: dict[tuple[str, ...], sql.Batch] = {}  # the rollups' batch tables per tag keys
        self.cpu_s = 0.0  # the stager thread's CPU (benchmarks/ingest.py)
        self.ready = 0  # batches `take` found staged already (by `ahead`, or for a retry)

    @staticmethod
    def _open(uri: str) -> sqlite3.Connection:
        connection = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=OFF")  # refilled from the bytes whenever anything fails
        connection.execute("PRAGMA busy_timeout=5000")  # a ledger connection may be reading its schema
        connection.execute(ingest.staging_ddl(temporary=False))
        db.math_functions(connection)
        return connection

    @staticmethod
    def _check_uris() -> None:
        """The ledger's connections are opened without `uri=True`, so their ATTACH reads a URI only where SQLite
        was built to (SQLITE_USE_URI: Debian's is, Windows' bundled one is not; elsewhere ATTACH would open a
        file of that name). Raises where it would not: the sink then stages on one core."""
        with closing(sqlite3.connect(":memory:")) as plain:
            options = {row[0] for row in plain.execute("PRAGMA compile_options")}
        if "USE_URI" not in options:
            raise sqlite3.NotSupportedError("this SQLite does not read URIs in ATTACH (built without USE_URI)")

    def attach(self, dbapi_connection: Any, _record: Any = None) -> None:
        """An engine's `connect` listener: this ledger connection reads the staging databases."""
        for uri, schema in zip(self._uris, SCHEMAS, strict=True):
            dbapi_connection.execute(f"ATTACH DATABASE '{uri}' AS {schema}")

    def take(self, lines: bytes, tag_keys: tuple[str, ...]) -> Staged:
        """`lines` staged with `tag_keys` (waiting for the stager, which stages them now if `ahead` did not).
        The ledger's connection reads the database this names until the next `take`."""
        for i in (1 - self._current, self._current):
            held = self._held[i]
            if held is not None and held.holds(lines, tag_keys):
                self._current = i
                self.ready += 1
                return held.future.result()
        self._current = 1 - self._current
        return self._submit(self._current, lines, tag_keys).result()

    def ahead(self, lines: bytes, tag_keys: tuple[str, ...]) -> None:
        """Start staging `lines` (the batch after the one `take` gave) in the database not being read."""
        i = 1 - self._current
        held = self._held[i]
        if held is None or not held.holds(lines, tag_keys):
            self._submit(i, lines, tag_keys)

    def _submit(self, i: int, lines: bytes, tag_keys: tuple[str, ...]) -> Future[Staged]:
        # one thread: a database is refilled only after what was asked of it before is done
        future = self._executor.submit(self._stage, i, lines, tag_keys)
        self._held[i] = _Held(lines, tag_keys, future)
        return future

    def _stage(self, i: int, lines: bytes, tag_keys: tuple[str, ...]) -> Staged:
        began, connection = time.thread_time(), self._connections[i]
        try:
            tables = self._tables.get(tag_keys)
            if tables is None:  # as tables of the stager's databases
                made = sql.batch_tables("sqlite", ingest.STAGING, "_seq", tag_keys)
                tables = self._tables[tag_keys] = sql.batch(made, "CREATE TABLE IF NOT EXISTS {} AS {}")
            for statement in (*tables.setup, *tables.clear, f"DELETE FROM {ingest.STAGING}"):
                connection.execute(statement)
            connection.execute(self._fill, (json_array(lines),))
            bad = connection.execute(self._check).fetchone()
            if bad is not None:
                return Staged(SCHEMAS[i], 0, refused=str(bad[0]))
            rows = int(connection.execute(f"SELECT COUNT(*) FROM {ingest.STAGING}").fetchone()[0])
            for statement in tables.run:
                connection.execute(statement)
            return Staged(SCHEMAS[i], rows)
        except Exception as exc:  # whatever it was, the serial way meets it again and raises it there
            return Staged(SCHEMAS[i], 0, failed=f"{type(exc).__name__}: {exc}")
        finally:
            self.cpu_s += time.thread_time() - began

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        for connection in self._connections:
            connection.close()
