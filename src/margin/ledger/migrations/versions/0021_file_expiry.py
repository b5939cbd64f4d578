"""batch_files.expires_at: when a file expires (OpenAI's `expires_after` of an upload, `output_expires_after` of
a job for its output and error files), NULL for a file kept until deleted; indexed, so the batch worker's sweep
finds the expired ones a page at a time. batches.output_expires_s: the seconds a job's output and error files
live after they are written (NULL: kept until deleted).

Nullable columns without a default: no rewrite of existing rows, which all stay kept until deleted, as before.

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batch_files", sa.Column("expires_at", sa.DateTime(timezone=True)))
    op.create_index("ix_batch_files_expires_at", "batch_files", ["expires_at"])
    op.add_column("batches", sa.Column("output_expires_s", sa.Integer))


def downgrade() -> None:
    op.drop_column("batches", "output_expires_s")
    op.drop_index("ix_batch_files_expires_at", table_name="batch_files")
    op.drop_column("batch_files", "expires_at")
