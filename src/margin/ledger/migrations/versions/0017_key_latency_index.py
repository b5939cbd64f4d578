"""ledger: a key's index also holds each row's kind and latencies, so a key's exact percentiles read no row

`/v1/margin/usage` (a key's own usage) reads its sums and latency histograms from the daily rollups' `key`
dimension; its exact percentiles (margin.ledger.read.latency) then sort one histogram bin of the key's rows in
the window. Keyed by (key_id, created_at) only, that read fetched each of the key's rows from the table (or
walked the whole ledger's bin): ~0.1 s a percentile for a key of 20k rows in a 1M-row ledger. With the kind
and the latencies in the index (key_id, created_at, kind, e2e_ms, ttft_ms) it is a covering scan: ~5 ms.
Appends still go to the end of each key's run; the entries are ~2 × wider.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

NARROW = ["key_id", "created_at"]
COVERING = ["key_id", "created_at", "kind", "e2e_ms", "ttft_ms"]


def upgrade() -> None:
    replace("ix_ledger_key_created", "ix_ledger_key_latency", COVERING)


def downgrade() -> None:
    replace("ix_ledger_key_latency", "ix_ledger_key_created", NARROW)


def replace(old: str, new: str, key: list[str]) -> None:
    """Index `old` gives way to `new` (as 0014 does; a migration is frozen, so its own copy). On PostgreSQL
    online: `new` is built CONCURRENTLY, outside of a transaction, while the ledger takes appends, then `old`
    is dropped CONCURRENTLY; a build that failed half-way leaves an invalid `new`, so a retry drops it first.
    SQLite has no online build: its writers wait (busy timeout)."""
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index(old, "ledger")
        op.create_index(new, "ledger", key)
        return
    with op.get_context().autocommit_block():
        op.drop_index(new, "ledger", postgresql_concurrently=True, if_exists=True)
        op.create_index(new, "ledger", key, postgresql_concurrently=True)
        op.drop_index(old, "ledger", postgresql_concurrently=True, if_exists=True)
