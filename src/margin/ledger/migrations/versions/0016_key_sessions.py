"""keys: `sessions_not_before`, so that a logout ends a key's dashboard sessions on the server (a session
token issued before it is refused), not only in the browser that logged out

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("sessions_not_before", sa.BigInteger))  # Unix milliseconds


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("sessions_not_before")
