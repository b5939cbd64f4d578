"""hardening: a dead-letter table for ledger rows the database refuses

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_dead_letter",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("row", sa.Text, nullable=False),
        sa.Column("salvaged", sa.Boolean, nullable=False),
    )
    op.create_index("ix_ledger_dead_letter_request", "ledger_dead_letter", ["request_id"])


def downgrade() -> None:
    op.drop_index("ix_ledger_dead_letter_request", "ledger_dead_letter")
    op.drop_table("ledger_dead_letter")
