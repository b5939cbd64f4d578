"""cost levers: cache hits and routing on the ledger

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.add_column(sa.Column("cache", sa.String(16)))
        batch.add_column(sa.Column("saved_nanousd", sa.BigInteger))
        batch.add_column(sa.Column("router_score", sa.Float))
        batch.add_column(sa.Column("counterfactual_nanousd", sa.BigInteger))
    op.create_table(
        "cache_entries",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_cache_entries_expires", "cache_entries", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_cache_entries_expires", "cache_entries")
    op.drop_table("cache_entries")
    with op.batch_alter_table("ledger") as batch:
        for name in ("counterfactual_nanousd", "router_score", "saved_nanousd", "cache"):
            batch.drop_column(name)
