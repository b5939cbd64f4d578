"""ledger: an index on (the row's `customer` tag, created_at), holding only the rows with that tag
(margin.ledger.tag_index). A per-tag-value budget (`customer=*`) rebuilds one value's counter from the ledger
when a process first uses it in a window (margin.ledger.read.budget): without an index, each new customer's
first request in a month read every row of the month.

`customer` is `tags.indexed_keys`' default; the config is not known here: `margin db index-tags` makes the
indexes those of the config's keys (the gateway warns at start while they differ). On a large ledger this
reads every row once (~1-3 s per million rows on SQLite, benchmarks/README.md).

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
    tag_index.sync(op.get_bind(), ["customer"])


def downgrade() -> None:
    tag_index.sync(op.get_bind(), [])
