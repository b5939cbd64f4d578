"""The staging table a batch of ledger rows goes through on its way into `ledger`.

In the caller's transaction: `prepare` takes the ingestion lock and empties `ledger_staging` (a temporary
table each connection makes for itself); the caller fills it; `ingest_staged` drops the (request_id, kind)
pairs already in `ledger` or earlier in the batch, appends the rest and returns how many it appended. The
hourly rollup is kept by the database trigger on `ledger` (margin.ledger.rollup), which fires for appended
rows only. So replaying a batch is a no-op and is never counted twice.

Ingests never race: on PostgreSQL an advisory lock serializes those of several processes; on SQLite the
transaction takes the database's write lock before it reads anything (a deferred transaction that read first
could not write after another connection's commit: SQLite answers "database is locked" at once).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.schema import CreateTable

from margin.ledger.models import ledger

STAGING = "ledger_staging"
COLUMNS = [column.name for column in ledger.columns if column.name != "id"]
LOCK_ID = 7_311_541  # pg_advisory_xact_lock key of ledger ingestion

staging = sa.Table(
    STAGING,
    sa.MetaData(),  # not part of the schema: a temporary table each connection creates for itself
    *(sa.Column(c.name, c.type) for c in ledger.columns if c.name != "id"),
    sa.Column("_seq", sa.Integer, nullable=False),
    prefixes=["TEMPORARY"],
)


def _lock(connection: sa.Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LOCK_ID})")
    else:  # a write statement, even one that changes nothing, takes SQLite's write lock (waiting busy_timeout)
        connection.exec_driver_sql("UPDATE outbox_offsets SET rows = rows WHERE 0")


def prepare(connection: sa.Connection) -> None:
    """Lock ingestion and make an empty `ledger_staging` for this connection."""
    _lock(connection)
    connection.execute(CreateTable(staging, if_not_exists=True))
    connection.execute(sa.delete(staging))


def _dedupe(connection: sa.Connection) -> None:
    connection.exec_driver_sql(  # the first of each (request_id, kind) in the batch (one grouping, not n²)
        f"DELETE FROM {STAGING} WHERE _seq NOT IN (SELECT MIN(_seq) FROM {STAGING} GROUP BY request_id, kind)"
    )
    connection.exec_driver_sql(
        f"DELETE FROM {STAGING} WHERE EXISTS (SELECT 1 FROM ledger l WHERE l.request_id = {STAGING}.request_id "
        f"AND l.kind = {STAGING}.kind)"
    )


def ingest_staged(connection: sa.Connection) -> int:
    """Append what `ledger_staging` holds (made by `prepare`, filled by the caller) to the ledger; returns
    the rows appended."""
    _dedupe(connection)
    names = ", ".join(f'"{name}"' for name in COLUMNS)
    inserted = connection.exec_driver_sql(
        f"INSERT INTO ledger ({names}) SELECT {names} FROM {STAGING} ORDER BY _seq"
    ).rowcount
    connection.execute(sa.delete(staging))
    return int(inserted)
