"""Moving outbox lines into the ledger: one transaction per batch, with the batch's outbox offset.

A batch is the raw bytes of whole lines (one JSON object each) joined into one JSON array; the database parses
it (SQLite's JSON1 `json_each`, PostgreSQL's `json_to_recordset`) into the staging table, so no Python runs
per row. Then margin.ledger.ingest drops the rows already in the ledger, appends the rest and updates the
rollups, and the file's offset is committed in `outbox_offsets` in the same transaction: after a crash the
ingester resumes exactly after the last committed batch, and replaying one is a no-op anyway.

On a SQLite file the bytes are parsed, checked and grouped on a second thread (margin.ledger.stager), the next
batch while this one is appended.

A batch the database refuses for its content (not because it is unreachable) is moved again line by line, each
line in its own transaction with its offset; a line still refused goes to `ledger_dead_letter` with the error,
and a coerced copy of the row to the ledger when one fits (margin.ledger.deadletter). So one bad row never
blocks the rows behind it, and a dead letter is written once even if the ingester dies half-way.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from margin.ledger import db, deadletter, ingest, measures, rollup
from margin.ledger.models import ledger, ledger_dead_letter, outbox_offsets
from margin.ledger.stager import Stager, json_array

log = logging.getLogger("margin.ledger")
_UPDATE_OFFSET = sa.text(
    "UPDATE outbox_offsets SET byte_offset = :offset, rows = :rows, updated_at = :now WHERE segment = :segment"
).bindparams(sa.bindparam("now", type_=sa.DateTime(timezone=True)))
_INSERT_OFFSET = sa.text(
    "INSERT INTO outbox_offsets (segment, byte_offset, rows, updated_at) VALUES (:segment, :offset, :rows, :now)"
).bindparams(sa.bindparam("now", type_=sa.DateTime(timezone=True)))
_INTEGERS = [c.name for c in ledger.columns if c.name != "id" and isinstance(c.type, sa.Integer)]


class RowsRefused(Exception):
    """The database (or the check before it) refused something in the batch: move it line by line."""


@dataclass
class Cursor:
    """How far the ingester got in one outbox file (committed), and what it moved from it."""

    segment: str
    offset: int = 0
    rows: int = 0
    inserted: int = 0
    dead_letters: int = 0


# SQLite errors of the OperationalError class that are about the rows, not the database: damaged bytes in the
# file, and a SUM past 64 bits (the rollups of rows whose costs add up past $9.2e9: before, retried forever, and
# no row of that batch or any after it reached the ledger)
_ROWS_ERRORS = ("malformed JSON", "JSON cannot hold", "integer overflow")


def transient(exc: BaseException) -> bool:
    """The database is unreachable or busy: keep the lines and retry. A batch the database could not parse or
    add up (`_ROWS_ERRORS`) is about the rows, not the database."""
    if not deadletter.is_transient(exc):
        return False
    text = str(exc)
    return not any(error in text for error in _ROWS_ERRORS)


def _fill_sqlite() -> str:
    """Materialized first: json_each renders an element's text anew each time it is read, and every
    json_extract of the same text then hits SQLite's parse cache (measured: 3-4x faster than reading
    json_each's `value` in each json_extract)."""
    names = ", ".join(f'"{name}"' for name in ingest.COLUMNS)
    values = {name: f"json_extract(v, '$.{name}')" for name in ingest.COLUMNS}
    # created_at is written as 2026-11-23 12:30:05.123456+00:00; stored as SQLAlchemy stores it on SQLite
    values["created_at"] = "substr(json_extract(v, '$.created_at'), 1, 26)"
    for integer, (real, scale) in ingest.INTEGERS.items():  # as ingest's own UPDATE would, without its pass
        values[integer] = f"COALESCE({values[integer]}, {measures.rounded('sqlite', f'{values[real]} * {scale}')})"
    return (
        f"INSERT INTO {ingest.STAGING} ({names}, _seq) WITH r(k, v) AS MATERIALIZED "
        f"(SELECT key, value FROM json_each(?)) SELECT {', '.join(values.values())}, k FROM r"
    )


def _check_sqlite() -> str:
    """SQLite stores an integer beyond 64 bits as a float where an integer belongs: refuse it instead."""
    cases = " ".join(f"WHEN typeof(\"{c}\") NOT IN ('integer', 'null') THEN '{c}'" for c in _INTEGERS)
    return f"SELECT CASE {cases} END AS bad FROM {ingest.STAGING} WHERE bad IS NOT NULL LIMIT 1"


def _fill_postgresql() -> str:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    columns = {c.name: c for c in ledger.columns if c.name != "id"}
    names = ", ".join(f'"{name}"' for name in ingest.COLUMNS)
    typed = ", ".join(f'"{name}" {columns[name].type.compile(dialect=dialect)}' for name in ingest.COLUMNS)
    return (
        f"INSERT INTO {ingest.STAGING} ({names}, _seq) SELECT {names}, _ord FROM "
        f"ROWS FROM (json_to_recordset(%s::json) AS ({typed})) WITH ORDINALITY AS r({names}, _ord)"
    )


class BatchSink:
    """Writes batches of outbox lines on one connection at a time (the ingester's thread)."""

    starts = 1  # processes the SQL has run in (RemoteSink counts its children): this one

    def __init__(self, url: str, engine: sa.Engine | None = None, *, stage_ahead: bool = True) -> None:
        self._owned = engine is None
        self._engine = engine if engine is not None else db.make_sync_engine(url)
        self._sqlite = self._engine.dialect.name == "sqlite"
        self._fill = _fill_sqlite() if self._sqlite else _fill_postgresql()
        self._check = _check_sqlite() if self._sqlite else None
        if self._sqlite:
            sa.event.listen(self._engine, "connect", _memory_temp_store)
        # a backlog on two cores: the next batch is staged while this one is appended (margin.ledger.stager);
        # not for a ledger in memory (its engine is the caller's) nor PostgreSQL (whose server has processes of
        # its own), nor where the config says one core (storage.ingest_stage_ahead: false)
        self._stager: Stager | None = None
        if stage_ahead and self._sqlite and self._owned and db.sqlite_file(url) is not None:
            try:
                self._stager = Stager(self._fill, self._check or "")
            except sqlite3.Error as exc:  # a SQLite without its in-memory VFS, or URIs: one core, as before
                log.warning("ledger ingest stages each batch itself (%s)", exc)
            else:
                sa.event.listen(self._engine, "connect", self._stager.attach)
        self._keys: tuple[str, ...] | None = None  # the rolled-up tag keys the last batch found
        self.pipelined = 0  # batches appended from the stager's database (the others: the serial way)

    @property
    def pid(self) -> int | None:
        """The process the SQL runs in: this one."""
        return os.getpid()

    def start(self) -> None:
        """Nothing to start: the engine connects on first use."""

    def committed(self, segment: str) -> tuple[int, int]:
        """(offset, rows) committed for an outbox file; (0, 0) for one never read."""
        query = sa.select(outbox_offsets.c.byte_offset, outbox_offsets.c.rows)
        with self._engine.connect() as connection:
            found = connection.execute(query.where(outbox_offsets.c.segment == segment)).first()
        return (int(found[0]), int(found[1])) if found else (0, 0)

    def forget(self, segment: str) -> None:
        """The file is gone (wholly ingested and deleted): its offset row is no longer needed."""
        with self._engine.begin() as connection:
            connection.execute(sa.delete(outbox_offsets).where(outbox_offsets.c.segment == segment))

    def _stage(self, connection: sa.Connection, lines: bytes, ahead: bytes = b"") -> int:
        """Append `lines` (staged by the stager, which then starts on `ahead`, or here); returns rows appended."""
        if self._stager is None:
            return self._serial(connection, lines)
        if self._keys is None:
            rollup.lock(connection)  # first (margin.ledger.ingest: SQLite's deferred transactions)
            self._keys = rollup.rolled_up_keys(connection)
        keys = self._keys
        staged = self._stager.take(lines, keys)
        if ahead:
            self._stager.ahead(ahead, keys)
        if staged.refused is not None:
            raise RowsRefused(f"{staged.refused}: integer out of range for the column")
        if staged.failed is not None:  # the serial way, which says why
            return self._serial(connection, lines)
        if ingest.ingest_attached(connection, staged.schema, staged.rows, keys):
            self.pipelined += 1
            return staged.rows
        self._keys = rollup.rolled_up_keys(connection)  # a duplicate, or other tag keys: staging is still good
        return ingest.ingest_copied(connection, staged.schema)

    def _serial(self, connection: sa.Connection, lines: bytes) -> int:
        """Stage `lines` in this connection's staging table and append them."""
        ingest.prepare(connection)
        connection.exec_driver_sql(self._fill, (json_array(lines),))
        if self._check is not None:
            bad = connection.exec_driver_sql(self._check).scalar()
            if bad is not None:
                raise RowsRefused(f"{bad}: integer out of range for the column")
        return ingest.ingest_staged(connection, integers=not self._sqlite)

    @staticmethod
    def _advance(connection: sa.Connection, cursor: Cursor, end: int, rows: int) -> None:
        values = {"segment": cursor.segment, "offset": end, "rows": cursor.rows + rows, "now": datetime.now(UTC)}
        if not connection.execute(_UPDATE_OFFSET, values).rowcount:
            connection.execute(_INSERT_OFFSET, values)

    def move(self, cursor: Cursor, lines: bytes, rows: int, ahead: bytes = b"") -> None:
        """Append whole lines read at `cursor.offset` and commit the offset after them, in one transaction.
        Raises RowsRefused (or the database's error) and changes nothing when the batch is refused. `ahead`:
        the lines after them, if known (the next call's, staged meanwhile)."""
        try:
            with self._engine.begin() as connection:
                inserted = self._stage(connection, lines, ahead)
                self._advance(connection, cursor, cursor.offset + len(lines), rows)
        except sa.exc.DBAPIError as exc:
            if transient(exc):
                raise
            raise RowsRefused(f"{type(exc.orig).__name__}: {exc.orig}") from exc
        cursor.offset += len(lines)
        cursor.rows += rows
        cursor.inserted += inserted

    def move_each(self, cursor: Cursor, lines: bytes) -> None:
        """Line by line, each with its offset; a refused line goes to the dead-letter table. Stops (raising
        the database's error) when the database goes away: what was done stays done."""
        for line in lines.splitlines(keepends=True):
            try:
                self.move(cursor, line, 1)
                continue
            except RowsRefused as refused:
                error: BaseException = refused
            with self._engine.begin() as connection:
                self._advance(connection, cursor, cursor.offset + len(line), 1)  # first: opens the transaction
                salvaged = self._salvage(connection, line)
                connection.execute(ledger_dead_letter.insert(), [_letter(line, error, salvaged)])
            cursor.offset += len(line)
            cursor.rows += 1
            cursor.inserted += int(salvaged)
            cursor.dead_letters += 1
            log.error("ledger row refused (%s); set aside in ledger_dead_letter", error)

    def _salvage(self, connection: sa.Connection, line: bytes) -> bool:
        """Try a coerced copy of the row (in a savepoint: its failure must not undo the dead letter)."""
        row = _parse(line)
        if row is None:
            return False
        try:
            with connection.begin_nested():
                self._stage(connection, orjson.dumps(deadletter.coerce(row), default=str) + b"\n")
        except (RowsRefused, sa.exc.DBAPIError) as exc:
            if isinstance(exc, sa.exc.DBAPIError) and transient(exc):
                raise
            return False
        return True

    def close(self) -> None:
        if self._owned:
            self._engine.dispose()
        if self._stager is not None:
            self._stager.close()


def _memory_temp_store(dbapi_connection: Any, _record: Any) -> None:
    # the staging table and the rollups' per-batch temporary tables (margin.ledger.rollup_sql) stay in memory.
    # synchronous=NORMAL in WAL mode (margin.ledger.db) may lose the last commits on a power cut, never on a
    # process crash: the outbox file is the durable copy, and the offset commits with the rows, so a lost
    # batch is simply read again
    dbapi_connection.execute("PRAGMA temp_store=MEMORY")
    # the ledger's indexes of a large ledger do not fit SQLite's default 2 MB page cache: each insert then
    # reads index pages again; this one long-lived connection keeps up to 64 MB of them
    dbapi_connection.execute("PRAGMA cache_size=-65536")


def _parse(line: bytes) -> dict[str, Any] | None:
    """The row of a refused line, or None. The stdlib's parser: orjson reads an integer beyond 64 bits as a
    float, which coercion would not clamp."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def _letter(line: bytes, error: BaseException, salvaged: bool) -> dict[str, Any]:
    row = _parse(line)
    if row is None:  # damaged bytes: keep them as text (escaped), with no row to salvage
        return deadletter.dead_letter(
            {"request_id": "?", "kind": "?", "line": line.decode("utf-8", "replace")}, error, False
        )
    return deadletter.dead_letter(row, error, salvaged)
