"""batches: the tokens a job's lines used (`usage`, OpenAI's batch field), summed from its ledger rows when it
ends, so that a finished job's object is read without adding up its rows (a 50,000-line job has 50,000 or more)

NULL while a job runs (its object sums its rows then) and for jobs that ended before this revision (summed
when read). A nullable column without a default: no rewrite of existing rows.

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("usage", sa.JSON))


def downgrade() -> None:
    op.drop_column("batches", "usage")
