"""stored_responses: Responses API answers kept when `responses.store` is on (margin.ledger.stored), so that
`previous_response_id` continues a conversation and `GET /v1/responses/{id}` reads one back. A row holds one
turn: its input items as received and the Response object as answered, its owner (key and org) and when it
expires (`responses.retention_days`).

New table only: nothing existing is rewritten.

Revision ID: 0026
Revises: 0025
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stored_responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(64)),
        sa.Column("org", sa.String(128)),
        sa.Column("previous_id", sa.String(64)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("bytes", sa.Integer, nullable=False),
        sa.Column("input", sa.JSON, nullable=False),
        sa.Column("response", sa.JSON, nullable=False),
    )
    op.create_index("ix_stored_responses_expires_at", "stored_responses", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_stored_responses_expires_at", table_name="stored_responses")
    op.drop_table("stored_responses")
