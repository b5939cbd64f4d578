"""ledger: the processing tier (`service_tier`) a request was charged at

OpenAI's flex tier costs about half the standard rate and its priority tier about 1.8×: a row records the tier
the upstream said served it (else the one asked for) beside the cost priced at it. NULL for rows before this
revision, cache hits, and requests that reached no backend. A nullable column without a default: no rewrite of
existing rows on either database (on PostgreSQL a catalog change, whose brief lock waits for appends in flight).

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ledger", sa.Column("service_tier", sa.String(16)))


def downgrade() -> None:
    # ALTER TABLE … DROP COLUMN on SQLite too (3.35+): a batch copy of the table would lose its expression
    # indexes (0014), which SQLite's reflection skips
    op.drop_column("ledger", "service_tier")
