"""batches: the Batch API's files, jobs and lines; ledger columns for batch lines and carbon-aware routes

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

LEDGER_COLUMNS = (
    ("batch_id", sa.String(40)),
    ("discount_nanousd", sa.BigInteger),
    ("route_pref", sa.String(8)),
    ("route_default", sa.String(128)),
    ("default_cost_nanousd", sa.BigInteger),
    ("default_co2e_g", sa.Float),
)
MOMENTS = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")


def upgrade() -> None:
    for name, kind in LEDGER_COLUMNS:  # plain ADD COLUMN: SQLite keeps the table
        op.add_column("ledger", sa.Column(name, kind))
    op.create_index("ix_ledger_batch", "ledger", ["batch_id"])
    op.create_table(
        "batch_files",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("key_id", sa.String(32)),
        sa.Column("org", sa.String(128)),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("filename", sa.String(256), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("lines", sa.Integer, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_batch_files_key_created", "batch_files", ["key_id", "created_at"])
    op.create_table(
        "batches",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("key_id", sa.String(32)),
        sa.Column("org", sa.String(128)),
        sa.Column("team", sa.String(128)),
        sa.Column("input_file_id", sa.String(40), nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("completion_window", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("model", sa.String(128)),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("meta", sa.JSON),
        sa.Column("errors", sa.JSON),
        sa.Column("plan", sa.JSON),
        sa.Column("total", sa.Integer, nullable=False, server_default="0"),
        sa.Column("completed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("output_file_id", sa.String(40)),
        sa.Column("error_file_id", sa.String(40)),
        *(sa.Column(f"{moment}_at", sa.DateTime(timezone=True)) for moment in MOMENTS),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(40)),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_batches_key_created", "batches", ["key_id", "created_at"])
    op.create_index("ix_batches_status", "batches", ["status"])
    op.create_table(
        "batch_lines",
        sa.Column("batch_id", sa.String(40), primary_key=True),
        sa.Column("line", sa.Integer, primary_key=True),
        sa.Column("custom_id", sa.String(256), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("not_before", sa.DateTime(timezone=True)),
        sa.Column("request_id", sa.String(64)),
        sa.Column("status_code", sa.Integer),
        sa.Column("response", sa.Text),
        sa.Column("error", sa.JSON),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("batch_id", "custom_id", name="uq_batch_lines_custom_id"),
    )
    op.create_index("ix_batch_lines_status", "batch_lines", ["batch_id", "status"])


def downgrade() -> None:
    op.drop_table("batch_lines")
    op.drop_table("batches")
    op.drop_table("batch_files")
    op.drop_index("ix_ledger_batch", "ledger")
    with op.batch_alter_table("ledger") as batch:  # no trigger to keep: rollups are kept per batch since 0006
        for name, _ in reversed(LEDGER_COLUMNS):
            batch.drop_column(name)
