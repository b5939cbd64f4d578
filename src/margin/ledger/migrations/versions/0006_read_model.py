"""read model: integer energy and carbon on the ledger; rollups by tag keys, latency histograms, attach and
tasks, kept per ingested batch (margin.ledger.rollup) instead of 0004's per-row trigger

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from margin.ledger import measures, models, rollup
from margin.ledger.migrations import hourly_trigger_0004 as old

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

NEW = (
    models.ledger_daily,
    models.ledger_latency,
    models.ledger_attach,
    models.ledger_tasks,
    models.ledger_task_daily,
    models.ledger_charges,
    models.ledger_rollup_keys,
)


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    for statement in old.drop_sql(dialect):
        op.execute(statement)
    op.drop_table("ledger_hourly")
    with op.batch_alter_table("ledger") as batch:
        batch.add_column(sa.Column("energy_uj", sa.BigInteger))
        batch.add_column(sa.Column("co2e_ng", sa.BigInteger))
    op.execute(
        f"UPDATE ledger SET energy_uj = {measures.rounded(dialect, 'energy_j * 1000000')}, "
        f"co2e_ng = {measures.rounded(dialect, 'co2e_g * 1000000000')}"
    )
    for table in (models.ledger_hourly, *NEW):
        table.create(bind)
    op.create_index("ix_feedback_created", "feedback", ["created_at"])
    # the rollups are filled by the last migration that changes their shape (0019: `rollup.rebuild` runs
    # today's SQL, which reads ledger columns that later migrations add); here only the tag keys they roll up
    op.bulk_insert(models.ledger_rollup_keys, [{"tag_key": key} for key in rollup.DEFAULT_TAG_KEYS])


def downgrade() -> None:
    bind = op.get_bind()
    op.drop_index("ix_feedback_created", "feedback")
    for table in reversed((models.ledger_hourly, *NEW)):
        table.drop(bind)
    with op.batch_alter_table("ledger") as batch:
        batch.drop_column("co2e_ng")
        batch.drop_column("energy_uj")
    op.create_table(
        "ledger_hourly",
        sa.Column("hour", sa.String(19), primary_key=True),
        *(sa.Column(name, sa.String(256), primary_key=True) for name in old.DIMENSIONS),
        *(sa.Column(name, sa.Float if name in old.FLOATS else sa.BigInteger, nullable=False) for name in old.MEASURES),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
    )
    dialect = bind.dialect.name
    op.execute(old.backfill_sql(dialect))
    for statement in old.create_sql(dialect):
        op.execute(statement)
