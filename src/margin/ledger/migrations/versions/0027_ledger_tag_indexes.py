"""ledger: an index per rolled-up tag key on (the row's tag value, created_at), holding only the rows with that
tag (margin.ledger.tag_index). A per-tag-value budget (`customer=*`) rebuilds one value's counter from the
ledger when a process first uses it in a window (margin.ledger.read.budget): without an index, each new
customer's first request in a month read every row of the month.

The keys are those the rollups hold now (ledger_rollup_keys: `tags.rollup_keys` as of the last `margin db
rebuild-rollups`, feature and customer by default); a rebuild with other keys makes the indexes follow. On a
large ledger this reads every row once per key (on 1M rows, benchmarks/README.md).

Revision ID: 0027
Revises: 0026
"""

from __future__ import annotations

from alembic import op

from margin.ledger import tag_index

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    keys = [row[0] for row in bind.exec_driver_sql("SELECT tag_key FROM ledger_rollup_keys")]
    tag_index.sync(bind, keys)


def downgrade() -> None:
    tag_index.sync(op.get_bind(), [])
