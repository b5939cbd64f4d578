"""governance: key org/admin/policy, rules table, ledger residency/guard columns

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("org", sa.String(128)))
        batch.add_column(sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("policy", sa.JSON))
    with op.batch_alter_table("ledger") as batch:
        batch.add_column(sa.Column("jurisdiction", sa.String(32)))
        batch.add_column(sa.Column("org", sa.String(128)))
        batch.add_column(sa.Column("guard", sa.JSON))
        batch.add_column(sa.Column("prompt_text", sa.Text))
    op.create_table(
        "gov_rules",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(160), primary_key=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("gov_rules")
    with op.batch_alter_table("ledger") as batch:
        for name in ("prompt_text", "guard", "org", "jurisdiction"):
            batch.drop_column(name)
    with op.batch_alter_table("api_keys") as batch:
        for name in ("policy", "is_admin", "org"):
            batch.drop_column(name)
