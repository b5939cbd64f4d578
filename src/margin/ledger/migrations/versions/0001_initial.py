"""initial ledger and api keys

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False, server_default="request"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(32)),
        sa.Column("team", sa.String(128)),
        sa.Column("user", sa.String(256)),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("model", sa.String(128)),
        sa.Column("requested_model", sa.String(128)),
        sa.Column("backend", sa.String(64)),
        sa.Column("region", sa.String(64)),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("http_status", sa.Integer, nullable=False),
        sa.Column("error_code", sa.String(64)),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("cached_tokens", sa.Integer, nullable=False),
        sa.Column("usage_source", sa.String(16)),
        sa.Column("ttft_ms", sa.Float),
        sa.Column("e2e_ms", sa.Float, nullable=False),
        sa.Column("overhead_ms", sa.Float),
        sa.Column("backend_ms", sa.Float),
        sa.Column("queue_ms", sa.Float),
        sa.Column("cost_nanousd", sa.BigInteger),
        sa.Column("cost_status", sa.String(16), nullable=False),
        sa.Column("cost_method", sa.String(16)),
        sa.Column("price_version", sa.String(64)),
        sa.Column("energy_j", sa.Float),
        sa.Column("energy_method", sa.String(16)),
        sa.Column("pue", sa.Float),
        sa.Column("co2e_g", sa.Float),
        sa.Column("grid_g_per_kwh", sa.Float),
        sa.Column("grid_source", sa.String(64)),
        sa.Column("config_hash", sa.String(16), nullable=False),
        sa.UniqueConstraint("request_id", "kind", name="uq_ledger_request_kind"),
    )
    op.create_index("ix_ledger_created_at", "ledger", ["created_at"])
    op.create_index("ix_ledger_team_created", "ledger", ["team", "created_at"])
    op.create_index("ix_ledger_model_created", "ledger", ["model", "created_at"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("team", sa.String(128)),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_index("ix_ledger_model_created", "ledger")
    op.drop_index("ix_ledger_team_created", "ledger")
    op.drop_index("ix_ledger_created_at", "ledger")
    op.drop_table("ledger")
