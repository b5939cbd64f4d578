"""audit_log: every administrative change (keys created, rotated, revoked; budgets, limits and flags put and
deleted; config reloads), and denied attempts at one, append-only. Each row carries `hash`, sha256 of the
previous row's hash and the row's canonical JSON (margin.ledger.audit), so an edit or a deletion in the middle
is found by `margin audit verify`. audit_anchor holds, once `audit.retention_days` pruned old rows, the hash the
oldest kept row chains from.

New tables only: nothing existing is rewritten.

Revision ID: 0025
Revises: 0024
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(160), nullable=False),
        sa.Column("actor_name", sa.String(128)),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("address", sa.String(64)),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.String(256)),
        sa.Column("request_id", sa.String(64)),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("before", sa.JSON),
        sa.Column("after", sa.JSON),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_table(
        "audit_anchor",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("last_pruned_id", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_anchor")
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_table("audit_log")
