"""ledger: the latency indexes keyed by histogram bin, then time (appends go to the end of each bin's run)

`ix_ledger_e2e_created` and `ix_ledger_ttft_created` were keyed by the value itself, so every appended row
landed on a random page of each: on a ledger of a million rows those pages no longer fit SQLite's page cache,
and a batch's append cost ~4× what it cost on an empty ledger. Keyed by (bin, created_at), the rows of a batch
go to the end of the few dozen bins they fall in. An exact percentile reads the window's rows of one bin from
the index (covering: the value and the kind are in it) and sorts them (margin.ledger.read.latency).

The expression is margin.ledger.measures.latency_bin's as of this revision (a test keeps them equal). Every
write to `ledger` evaluates it, so on SQLite it needs ln() and floor(): built in where SQLite is compiled with
its math functions (Debian's is); margin's own connections add Python ones otherwise, but another tool
opening the file with a SQLite without them cannot write to `ledger`.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

BIN_SCALE = "11.541560327111707"  # 8 bins per doubling: 8 / ln 2
ZERO_BIN = "-1000"


def latency_bin(column: str) -> str:
    return (
        f"CASE WHEN {column} IS NULL THEN NULL WHEN {column} <= 0 THEN {ZERO_BIN} "
        f"ELSE CAST(FLOOR(LN({column}) * {BIN_SCALE}) AS INTEGER) END"
    )


def upgrade() -> None:
    for metric in ("e2e", "ttft"):
        column = f"{metric}_ms"
        key: list[str | sa.TextClause] = [sa.text(f"({latency_bin(column)})"), "created_at", column, "kind"]
        replace(f"ix_ledger_{metric}_created", f"ix_ledger_{metric}_bin", key)


def downgrade() -> None:
    for metric in ("e2e", "ttft"):
        replace(f"ix_ledger_{metric}_bin", f"ix_ledger_{metric}_created", [f"{metric}_ms", "created_at", "kind"])


def replace(old: str, new: str, key: list[str | sa.TextClause]) -> None:
    """Index `old` gives way to `new`. On PostgreSQL online: `new` is built CONCURRENTLY, outside of a
    transaction, while the ledger takes appends (a plain CREATE INDEX would hold them for the whole build: ~1 s
    a million rows), then `old` is dropped CONCURRENTLY. A build that failed half-way leaves an invalid `new`
    behind, so a retry drops it first. SQLite has no online build: its writers wait (busy timeout)."""
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index(old, "ledger")
        op.create_index(new, "ledger", key)
        return
    with op.get_context().autocommit_block():
        op.drop_index(new, "ledger", postgresql_concurrently=True, if_exists=True)
        op.create_index(new, "ledger", key, postgresql_concurrently=True)
        op.drop_index(old, "ledger", postgresql_concurrently=True, if_exists=True)
