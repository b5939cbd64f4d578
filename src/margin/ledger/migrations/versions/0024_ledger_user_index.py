"""ledger: a partial index on (user, created_at) for the rows that have a `user`. A per-user budget or limit
(`user=*`, `user=alice`) rebuilds one user's counter from the ledger when a process first uses it in a window
(margin.ledger.read.budget): without an index, each new user's first request in a window read every row of the
window. Rows without a `user` are not in the index, so traffic that sends none costs the ingest nothing more.

Revision ID: 0024
Revises: 0023
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

HAS_USER = sa.text('"user" IS NOT NULL')


def upgrade() -> None:
    op.create_index(
        "ix_ledger_user_created",
        "ledger",
        ["user", "created_at"],
        sqlite_where=HAS_USER,
        postgresql_where=HAS_USER,
    )


def downgrade() -> None:
    op.drop_index("ix_ledger_user_created", table_name="ledger")
