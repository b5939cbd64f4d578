"""The rollups, kept per ingested batch: `apply(connection, source)` adds one batch of new ledger rows (a staging
table, see margin.ledger.ingest) to every rollup table with `INSERT … SELECT … GROUP BY … ON CONFLICT DO
UPDATE SET x = x + excluded.x` statements, in the caller's transaction. No per-row Python, no trigger. The
statements (margin.ledger.rollup_sql) first compute each row's values once into a temporary table, then
group small pre-aggregates of it where a grouping allows (per hour, per key, per tag key, per latency bin),
so a batch's rows are sorted ~14 times instead of fanned out into ~50 UNION ALL branches that each
re-evaluated the expressions (243 → ~63 µs of CPU per row, benchmarks/README.md); the temporary tables are
kept per connection and emptied after each batch (rollup_sql.Temporary).

- ledger_hourly  per UTC hour × kind × team × org × model × backend × region: every sum (measures.MEASURES)
- ledger_daily   per dimension × UTC day × kind × team, for the key, endpoint, status, error and each rolled-up
                 tag key (ledger_rollup_keys, from `tags.rollup_keys`): the same sums; the tag keys also
                 across every team (team '*': 30 days × 500 customers, not × 20 teams as well)
- ledger_latency latency histograms (e2e, TTFT) per dimension × UTC day; per team for all rows and per model
- ledger_attach  per month × team (and every team, '*') × feature × customer, the UTC days it was seen, as
                 bits (distinct counts for the attach rate: a 30-day window reads ≤ 2 months of pairs, not
                 30 days of them)
- ledger_tasks   one row per task (measures.task: one tenant's task_id tag, else a request): anchor (its
                 earliest request: time, team, key, model, feature, customer…), requests, cost, unpriced requests
- ledger_charges priced requests per UTC day × key × team × model × backend × region × service tier (the FOCUS
                 export: a day's flex and priority requests of a model are charges apart from its standard ones)
- ledger_task_daily  tasks, cost and unpriced requests per anchor day × team × anchor dimension: a batch first
                 takes out the current contribution of every task it touches, updates ledger_tasks, then puts
                 the new one back (a task's anchor moves when an earlier request of it arrives later)

Why days for the tag dimensions: a tag such as `customer` has hundreds of values; per hour × team it has about
one row per request and a rollup saves nothing (measured on 1M synthetic rows: 999,851 rollup rows for
1M requests), per day it has ~10x fewer rows than the ledger. Windows are read as whole buckets from the
rollups plus their partial edges from the ledger rows (margin.ledger.read.plan).

`rebuild(connection, tag_keys)` recomputes everything from the ledger (after rows were edited by hand, or to
roll up other tag keys): `margin db rebuild-rollups`. Changing MEASURES, LEVERS or the dimensions needs a
migration that recreates the changed tables and refills them (0009 did, 0019 does); the earlier migrations
that create the tables from these definitions leave them empty, as `rebuild` runs today's SQL, which reads
ledger columns that later migrations add: the last such migration (0019) runs the rebuild where the rollups
were never filled, and a migration that changes one rollup on a filled ledger adds that one up again in SQL of
its own (0015 the tasks, 0019 the charges).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from margin.ledger import measures as m
from margin.ledger import rollup_sql as sql
from margin.ledger.models import (
    ledger_attach,
    ledger_charges,
    ledger_daily,
    ledger_hourly,
    ledger_latency,
    ledger_rollup_keys,
    ledger_task_daily,
    ledger_tasks,
)

DEFAULT_TAG_KEYS = ("feature", "customer")
WRITERS_LOCK = 7_311_541  # pg_advisory_xact_lock key taken by every writer of the ledger's rows and rollups
ROLLUPS = (ledger_hourly, ledger_daily, ledger_latency, ledger_attach, ledger_tasks, ledger_task_daily, ledger_charges)


def statements(dialect: str, source: str, order: str, tag_keys: Sequence[str]) -> sql.Batch:
    """One batch's rollup statements (margin.ledger.rollup_sql), in order."""
    return sql.statements(dialect, source, order, tag_keys)


def lock(connection: sa.Connection) -> None:
    """Wait for the other writers of the ledger and its rollups (ingests of every replica, a rebuild), until
    the caller's transaction ends. On PostgreSQL an advisory lock: a rebuild's DELETE does not see a group
    row an ingest adds meanwhile, so without it that row would be counted twice. On SQLite a write
    statement, even one that changes nothing, takes the database's write lock (waiting `busy_timeout`)."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITERS_LOCK})")
    else:
        connection.exec_driver_sql("UPDATE ledger_rollup_keys SET tag_key = tag_key WHERE 0")


def rolled_up_keys(connection: sa.Connection) -> tuple[str, ...]:
    """The tag keys ledger_daily and ledger_latency hold (in the order they were set)."""
    rows = connection.execute(sa.select(ledger_rollup_keys.c.tag_key).order_by(ledger_rollup_keys.c.tag_key))
    return tuple(row[0] for row in rows)


def apply(connection: sa.Connection, source: str, order: str = "_seq") -> None:
    """Add the rows of `source` (a table of ledger rows just inserted, none of them counted before) to every
    rollup. `order` breaks ties between a task's requests of the same instant (the batch's order). The
    statements are made once per connection (kept in its `info`) and the temporary tables they fill stay
    (emptied): the same statement text on an unchanged schema is prepared once by SQLite, not per batch."""
    shape = ("rollup", source, order, rolled_up_keys(connection))
    batch = connection.info.get(shape)
    if batch is None:
        batch = connection.info[shape] = statements(connection.dialect.name, source, order, shape[3])
    _run(connection, batch)


def apply_attached(connection: sa.Connection, schema: str, tag_keys: tuple[str, ...]) -> None:
    """Add a batch whose own tables (rollup_sql.batch_tables, made with `tag_keys`) another connection filled in
    the attached database `schema` (margin.ledger.stager): only the upserts run here."""
    shape = ("rollup-attached", schema, tag_keys)
    batch = connection.info.get(shape)
    if batch is None:
        dialect = connection.dialect.name
        upserts = sql.upserts(dialect, tag_keys, f"{schema}.")
        batch = connection.info[shape] = sql.batch(upserts, sql.temporary(dialect))
    _run(connection, batch)


def _run(connection: sa.Connection, batch: sql.Batch) -> None:
    # emptied before too: a caller that went on after a failed batch in its transaction (SQLite does not
    # abort it) must not count that batch's rows again
    for statement in (*batch.setup, *batch.clear, *batch.run, *batch.clear):
        connection.exec_driver_sql(statement)


def rebuild(connection: sa.Connection, tag_keys: Sequence[str] | None = None) -> dict[str, int]:
    """Recompute every rollup from the ledger (and set which tag keys are rolled up); returns row counts."""
    lock(connection)
    keys = tuple(dict.fromkeys(tag_keys)) if tag_keys is not None else rolled_up_keys(connection)
    for table in (*ROLLUPS, ledger_rollup_keys):
        connection.execute(sa.delete(table))
    if keys:
        connection.execute(ledger_rollup_keys.insert(), [{"tag_key": m.check_tag_key(k)} for k in keys])
    apply(connection, "ledger", order="id")
    return sizes(connection)


def sizes(connection: sa.Connection) -> dict[str, int]:
    """Rows in each rollup table (their cardinality)."""
    out: dict[str, int] = {}
    for table in ROLLUPS:
        out[table.name] = int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
    return out


def describe() -> dict[str, Any]:
    """What the rollups hold, for benchmark and docs output."""
    return {
        "hourly_dims": list(m.HOURLY_DIMS),
        "daily_dims": [*m.DAILY_DIMS, "<tag keys>"],
        "histogram_dims": [d or "all" for d in m.HISTOGRAM_DIMS] + ["<tag keys>"],
        "histogram_relative_error": round(m.RELATIVE_ERROR, 5),
    }
