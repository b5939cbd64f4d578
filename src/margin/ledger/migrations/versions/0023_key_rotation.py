"""api_keys: rotation (`margin keys rotate`, `POST /admin/keys/{id}/rotate`) keeps the key's id and issues a new
secret; the previous secret's hash stays in `previous_hash`, accepted until `previous_valid_until` (the grace
period), and `rotated_at` records when the key was last rotated.

Nullable columns without defaults: no rewrite of existing rows, which read as keys never rotated (one secret,
as before). `previous_hash` is indexed: a token is looked up by either hash.

Revision ID: 0023
Revises: 0022
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("previous_hash", sa.String(64)))
    op.add_column("api_keys", sa.Column("previous_valid_until", sa.DateTime(timezone=True)))
    op.add_column("api_keys", sa.Column("rotated_at", sa.DateTime(timezone=True)))
    op.create_index("ix_api_keys_previous_hash", "api_keys", ["previous_hash"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_api_keys_previous_hash", table_name="api_keys")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("rotated_at")
        batch.drop_column("previous_valid_until")
        batch.drop_column("previous_hash")
