"""The one way rows enter the ledger: `ingest_batch(connection, rows)`.

In the caller's transaction, on SQLite and PostgreSQL:
1. the batch goes into a temporary staging table (`ledger_staging`, one per connection, same columns as
   `ledger` plus `_seq`, the batch order);
2. the integer energy and carbon (`energy_uj`, `co2e_ng`) are filled from the meter's floats (by the caller
   that fills staging itself, or here);
3. staging is appended to `ledger` with no row taken out when none is a duplicate (the usual case: one pass,
   checked by the ledger's unique index); else that is undone and duplicates inside the batch, and
   (request_id, kind) pairs already in `ledger`, are deleted from staging first: replaying a row is a no-op
   and is never counted twice;
4. `rollup.apply(connection, "ledger_staging")` adds the appended rows to every rollup.

This is the seam for the data-plane ingester (an outbox file read in large batches): it calls
`ingest_batch` with the rows it read, or calls `prepare`, fills `ledger_staging` itself and calls
`ingest_staged`, or has another connection stage the batch in an attached database and calls
`ingest_attached` (margin.ledger.stager: steps 1, 2 and the rollups' batch tables on a second thread), all in
one transaction (on PostgreSQL the staging table is emptied at commit). Ingests never
race: on PostgreSQL an advisory lock (`rollup.lock`, which a rebuild takes too) serializes those of several
replicas (the dedup check and the rollup upserts then see every committed batch); on SQLite the transaction
takes the database's write lock before it reads anything (a deferred transaction that read first could not
write after another connection's commit: SQLite answers "database is locked" at once, without waiting).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.schema import CreateTable

from margin.ledger import measures, rollup
from margin.ledger.models import ledger

STAGING = "ledger_staging"
COLUMNS = [column.name for column in ledger.columns if column.name != "id"]
# the integer energy and carbon: from which float column, times what (measures: µJ, ng)
INTEGERS = {"energy_uj": ("energy_j", measures.MICRO), "co2e_ng": ("co2e_g", measures.NANO)}
_NAMES = ", ".join(f'"{name}"' for name in COLUMNS)

staging = sa.Table(
    STAGING,
    sa.MetaData(),  # not part of the schema: a temporary table each connection creates for itself
    *(sa.Column(c.name, c.type) for c in ledger.columns if c.name != "id"),
    sa.Column("_seq", sa.Integer, nullable=False),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DELETE ROWS",  # emptied in place at commit: a DELETE's dead rows are never vacuumed
)


def prepare(connection: sa.Connection) -> None:
    """Lock ingestion and make an empty `ledger_staging` for this connection."""
    rollup.lock(connection)
    ddl = connection.info.get("staging")  # compiled once per connection
    if ddl is None:
        ddl = connection.info["staging"] = str(CreateTable(staging, if_not_exists=True).compile(connection))
    connection.exec_driver_sql(ddl)
    connection.execute(sa.delete(staging))


def _dedupe(connection: sa.Connection) -> None:
    connection.exec_driver_sql(  # the first of each (request_id, kind) in the batch: one grouping, not a scan
        f"DELETE FROM {STAGING} WHERE _seq NOT IN (SELECT MIN(_seq) FROM {STAGING} GROUP BY request_id, kind)"
    )  # of staging per row (that was 450 µs a row in batches of 4,000: benchmarks/README.md, ingest.py)
    connection.exec_driver_sql(
        f"DELETE FROM {STAGING} WHERE EXISTS (SELECT 1 FROM ledger l WHERE l.request_id = {STAGING}.request_id "
        f"AND l.kind = {STAGING}.kind)"
    )


def _integers(connection: sa.Connection) -> None:
    dialect = connection.dialect.name
    sets = ", ".join(
        f"{integer} = COALESCE({integer}, {measures.rounded(dialect, f'{real} * {scale}')})"
        for integer, (real, scale) in INTEGERS.items()
    )
    where = " OR ".join(f"({integer} IS NULL AND {real} IS NOT NULL)" for integer, (real, _) in INTEGERS.items())
    connection.exec_driver_sql(f"UPDATE {STAGING} SET {sets} WHERE {where}")


def _insert(source: str) -> str:
    return f"INSERT INTO ledger ({_NAMES}) SELECT {_NAMES} FROM {source} WHERE true ORDER BY _seq"


def _append_all(connection: sa.Connection, source: str, staged: int) -> bool:
    """Append the `staged` rows of `source` (a staging table) to the ledger in the batch's order if none is a
    duplicate (one pass: the ledger's unique index does the checking); else change nothing."""
    savepoint = connection.begin_nested()
    try:  # a row the database refuses (not a duplicate) ends the savepoint too, before the caller's own
        inserted = connection.exec_driver_sql(f"{_insert(source)} ON CONFLICT (request_id, kind) DO NOTHING").rowcount
    except BaseException:
        savepoint.rollback()
        raise
    if inserted == staged:
        savepoint.commit()
        return True
    savepoint.rollback()
    return False


def _append(connection: sa.Connection, staged: int) -> int:
    """Append staging to the ledger: at once (`_append_all`), or, if a row would be skipped (a replay, or a
    duplicate inside the batch), with the duplicates taken out of staging first, as the rollups must count
    only the rows appended."""
    if _append_all(connection, STAGING, staged):
        return staged
    _dedupe(connection)
    return int(connection.exec_driver_sql(_insert(STAGING)).rowcount)


def ingest_staged(connection: sa.Connection, *, integers: bool = True) -> int:
    """Append what `ledger_staging` holds (made by `prepare`, filled by the caller) to the ledger and the
    rollups; returns the rows appended. `integers=False`: the caller filled energy_uj and co2e_ng itself."""
    rollup.lock(connection)
    if integers:
        _integers(connection)
    staged = int(connection.exec_driver_sql(f"SELECT COUNT(*) FROM {STAGING}").scalar_one())
    inserted = _append(connection, staged) if staged else 0
    if inserted:
        rollup.apply(connection, STAGING)
    connection.execute(sa.delete(staging))
    return int(inserted)


def ingest_attached(connection: sa.Connection, schema: str, staged: int, tag_keys: tuple[str, ...]) -> bool:
    """Append a batch that another connection staged in `schema` (an attached database holding `ledger_staging`
    and the rollups' batch tables, made with `tag_keys`: margin.ledger.stager) and add it to the rollups.
    False, having changed nothing, when it cannot go that way: a row is a duplicate, or the rolled-up tag
    keys are no longer those (the caller then ingests the batch with `ingest_staged`)."""
    rollup.lock(connection)
    if rollup.rolled_up_keys(connection) != tag_keys or not _append_all(connection, f"{schema}.{STAGING}", staged):
        return False
    rollup.apply_attached(connection, schema, tag_keys)
    return True


def ingest_copied(connection: sa.Connection, schema: str) -> int:
    """`ingest_staged` of the batch staged in `schema` (when `ingest_attached` could not take it), copied into
    this connection's staging table (cheaper than parsing its bytes again) and without its duplicates (the
    usual reason it is here: then the append is not tried a second time)."""
    prepare(connection)
    connection.exec_driver_sql(f"INSERT INTO {STAGING} ({_NAMES}, _seq) SELECT {_NAMES}, _seq FROM {schema}.{STAGING}")
    _dedupe(connection)
    return ingest_staged(connection, integers=False)  # the stager's fill computed them


def staging_ddl(*, temporary: bool = True) -> str:
    """SQLite's CREATE TABLE of the staging table: this connection's temporary one, or (temporary=False) a
    table of the database a stager fills."""
    ddl = str(CreateTable(staging, if_not_exists=True).compile(dialect=sqlite.dialect()))
    return ddl if temporary else ddl.replace("CREATE TEMPORARY TABLE", "CREATE TABLE", 1)


def ingest_batch(connection: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Append a batch of ledger rows (dicts by column name; missing columns are NULL) and update the
    rollups, in the caller's transaction. Returns how many were new."""
    if not rows:
        return 0
    prepare(connection)
    connection.execute(
        staging.insert(), [{**{c: row.get(c) for c in COLUMNS}, "_seq": i} for i, row in enumerate(rows)]
    )
    return ingest_staged(connection)


def ingest(engine: sa.Engine, rows: Sequence[Mapping[str, Any]]) -> int:
    """`ingest_batch` in its own transaction."""
    with engine.begin() as connection:
        return ingest_batch(connection, rows)
