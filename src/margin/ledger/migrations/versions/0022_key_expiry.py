"""api_keys.expires_at: when a key stops being accepted (`margin keys create --expires 30d`, `POST /admin/keys`
with `expires_at` or `expires_in_s`); NULL for a key that never expires.

A nullable column without a default: no rewrite of existing rows, which all stay keys that never expire.

Revision ID: 0022
Revises: 0021
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("api_keys", "expires_at")
