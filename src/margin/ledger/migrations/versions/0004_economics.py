"""economics: request outcomes (feedback), busy time on the ledger, the hourly rollup and its trigger

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from margin.ledger.migrations import hourly_trigger_0004 as rollup

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.add_column(sa.Column("busy_ms", sa.Float))
    op.create_index("ix_ledger_key_created", "ledger", ["key_id", "created_at"])
    op.create_index("ix_ledger_e2e_created", "ledger", ["e2e_ms", "created_at", "kind"])
    op.create_index("ix_ledger_ttft_created", "ledger", ["ttft_ms", "created_at", "kind"])
    op.create_table(
        "feedback",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(32)),
        sa.Column("success", sa.Boolean),
        sa.Column("score", sa.Float),
        sa.Column("value_nanousd", sa.BigInteger),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revisions", sa.Integer, nullable=False, server_default="1"),
    )
    op.create_table(
        "ledger_hourly",
        sa.Column("hour", sa.String(19), primary_key=True),
        *(sa.Column(name, sa.String(256), primary_key=True) for name in rollup.DIMENSIONS),
        *(
            sa.Column(name, sa.Float if name in rollup.FLOATS else sa.BigInteger, nullable=False)
            for name in rollup.MEASURES
        ),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
    )
    dialect = op.get_bind().dialect.name
    op.execute(rollup.backfill_sql(dialect))
    for statement in rollup.create_sql(dialect):
        op.execute(statement)


def downgrade() -> None:
    for statement in rollup.drop_sql(op.get_bind().dialect.name):
        op.execute(statement)
    op.drop_table("ledger_hourly")
    op.drop_table("feedback")
    op.drop_index("ix_ledger_ttft_created", "ledger")
    op.drop_index("ix_ledger_e2e_created", "ledger")
    op.drop_index("ix_ledger_key_created", "ledger")
    with op.batch_alter_table("ledger") as batch:
        batch.drop_column("busy_ms")
