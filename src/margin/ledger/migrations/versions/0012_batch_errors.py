"""batches: the lines refused at validation in a table of their own, not all in one value of the job's row

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    errors = op.create_table(
        "batch_errors",
        sa.Column("batch_id", sa.String(40), primary_key=True),
        sa.Column("line", sa.Integer, primary_key=True),
        sa.Column("error", sa.JSON, nullable=False),
    )
    jobs = sa.table("batches", sa.column("id", sa.String), sa.column("errors", sa.JSON))
    bind = op.get_bind()
    for job_id, listed in bind.execute(sa.select(jobs.c.id, jobs.c.errors)).all():  # jobs validated before
        rows = [{"batch_id": job_id, "line": error["line"], "error": error} for error in listed or []]
        if rows:
            bind.execute(errors.insert(), rows)


def downgrade() -> None:
    op.drop_table("batch_errors")
