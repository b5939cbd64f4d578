"""batches: a partial index on `status` for the jobs without their lines' counts (`line_counts IS NULL`: those
running, and those an older release ended with their line rows). The batch worker looks for the latter every 60
passes (margin.batches.progress.settle_finished); its query read every ended job kept (each with an EXISTS on
its lines), which grows with every job run until its files expire. Through this index it reads only the jobs
without counts; the ended and settled ones (nearly every row) are not in it.

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

UNSETTLED = sa.text("line_counts IS NULL")


def upgrade() -> None:
    op.create_index("ix_batches_unsettled", "batches", ["status"], sqlite_where=UNSETTLED, postgresql_where=UNSETTLED)


def downgrade() -> None:
    op.drop_index("ix_batches_unsettled", table_name="batches")
