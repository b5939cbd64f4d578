"""read model: feedback carries the task of its request, so grading a window's tasks reads no ledger rows

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from margin.ledger import feedback

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        # 512: as wide as the form this links to (today's measures.task; 0015 made it one tenant's and wider)
        batch.add_column(sa.Column("task", sa.String(512)))
    feedback.link_tasks(op.get_bind())


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("task")
