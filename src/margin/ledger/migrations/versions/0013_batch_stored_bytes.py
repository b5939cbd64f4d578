"""batches: what a job stores besides its files (`stored_bytes`, counted against max_stored_bytes_per_key);
finished jobs' lines and refused lines freed (their output and error files hold them); a key's unfinished jobs
indexed

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

FINAL = ("completed", "failed", "expired", "cancelled")
ROW_BYTES, LINE_BYTES = 1024, 128  # margin.batches.quota's, as of this revision


def _length(column: sa.ColumnElement[object]) -> sa.ColumnElement[int]:
    return sa.func.coalesce(sa.func.length(sa.cast(column, sa.Text)), 0)


def upgrade() -> None:
    op.add_column("batches", sa.Column("stored_bytes", sa.BigInteger, nullable=False, server_default="0"))
    op.create_index("ix_batches_key_status", "batches", ["key_id", "status"])
    jobs = sa.table(
        "batches",
        *(sa.column(name) for name in ("id", "status", "meta", "tags", "errors", "plan")),
        sa.column("stored_bytes", sa.BigInteger),
    )
    lines = sa.table(
        "batch_lines", *(sa.column(name) for name in ("batch_id", "custom_id", "body", "response", "error"))
    )
    refused = sa.table("batch_errors", sa.column("batch_id"), sa.column("error"))
    finished = sa.select(jobs.c.id).where(jobs.c.status.in_(FINAL))
    op.execute(refused.delete().where(refused.c.batch_id.in_(finished)))  # in the jobs' error files
    op.execute(lines.update().where(lines.c.batch_id.in_(finished)).values(body="", response=None))
    per_line = LINE_BYTES + _length(lines.c.custom_id) + _length(lines.c.body)
    per_line = per_line + _length(lines.c.response) + _length(lines.c.error)
    in_lines = sa.select(sa.func.coalesce(sa.func.sum(per_line), 0)).where(lines.c.batch_id == jobs.c.id)
    in_refused = sa.select(sa.func.coalesce(sa.func.sum(LINE_BYTES + _length(refused.c.error)), 0))
    in_refused = in_refused.where(refused.c.batch_id == jobs.c.id)
    in_row = ROW_BYTES + sum((_length(jobs.c[name]) for name in ("meta", "tags", "errors", "plan")), sa.literal(0))
    op.execute(jobs.update().values(stored_bytes=in_row + in_lines.scalar_subquery() + in_refused.scalar_subquery()))


def downgrade() -> None:
    op.drop_index("ix_batches_key_status", "batches")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("stored_bytes")
