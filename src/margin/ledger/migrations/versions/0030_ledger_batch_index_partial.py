"""ledger: the batch_id index holds only the rows of batch lines (partial: `batch_id IS NOT NULL`)

Its read is a job's rows (`margin batches show`: `batch_id = ?`), which implies the index's condition, so it
still reads through it (SQLite's and PostgreSQL's planners match a comparison on a column against `IS NOT
NULL` on it). A window's batch discounts (margin.ledger.read.charges: `batch_id IS NOT NULL`) read by time on
SQLite (ix_ledger_created_at), before and after.
Live traffic has no batch_id; before, each of its rows still went into the index (as NULL), ~1.5-4 µs of the
ingest's CPU a row (benchmarks/README.md, "Indexes and pragmas", session 24); now it costs them nothing.

Revision ID: 0030
Revises: 0029
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None

IS_BATCH_LINE = sa.text("batch_id IS NOT NULL")


def upgrade() -> None:
    replace("ix_ledger_batch", "ix_ledger_batch_lines", partial=True)


def downgrade() -> None:
    replace("ix_ledger_batch_lines", "ix_ledger_batch", partial=False)


def replace(old: str, new: str, *, partial: bool) -> None:
    """Index `old` gives way to `new` on batch_id (as 0017 does; a migration is frozen, so its own copy). On
    PostgreSQL online: `new` is built CONCURRENTLY, outside of a transaction, while the ledger takes appends,
    then `old` is dropped CONCURRENTLY; a build that failed half-way leaves an invalid `new`, so a retry drops
    it first. SQLite has no online build: its writers wait (busy timeout)."""
    where = {"sqlite_where": IS_BATCH_LINE, "postgresql_where": IS_BATCH_LINE} if partial else {}
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index(old, "ledger")
        op.create_index(new, "ledger", ["batch_id"], **where)
        return
    with op.get_context().autocommit_block():
        op.drop_index(new, "ledger", postgresql_concurrently=True, if_exists=True)
        op.create_index(new, "ledger", ["batch_id"], postgresql_concurrently=True, **where)
        op.drop_index(old, "ledger", postgresql_concurrently=True, if_exists=True)
