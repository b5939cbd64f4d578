"""read model: the cost levers' sums in ledger_hourly; ledger_attach per month × team with the days as bits;
the tag keys of ledger_daily and ledger_attach also across every team (team '*')

The savings page read every ledger row of its window for the batch and lowest-carbon/-cost levers, the
attach rate one row per day × feature × customer, and an admin's view by customer one row per day × team ×
customer; all three now read few rollup rows. The two changed tables are recreated, empty: this revision
rebuilt every rollup from the ledger with `rollup.rebuild`, which runs today's SQL, and that reads ledger
columns later revisions add (0018's `service_tier`); the last revision that changes the rollups' shape
(0019) rebuilds them where they were never filled.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from margin.ledger import measures, models

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    for table in (models.ledger_hourly, models.ledger_attach):
        op.drop_table(table.name)
        table.create(bind)
    # the rollups are filled by 0019 (it runs `rollup.rebuild` where ledger_hourly is empty)


def downgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    with op.batch_alter_table("ledger_hourly") as batch:
        for name in measures.LEVERS:
            batch.drop_column(name)
    op.drop_table("ledger_attach")
    op.create_table(
        "ledger_attach",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("feature", sa.String(256), primary_key=True),
        sa.Column("customer", sa.String(256), primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
    )
    feature, customer = (f"COALESCE({measures.tag(dialect, 'ledger', key)}, '')" for key in ("feature", "customer"))
    op.execute(
        f"INSERT INTO ledger_attach (day, feature, customer, requests) SELECT {measures.day(dialect, 'ledger')}, "
        f"{feature}, {customer}, COUNT(*) FROM ledger WHERE kind IN {measures.KINDS_SQL} GROUP BY 1, 2, 3"
    )
