"""read model: ledger_charges keyed by the service tier too, so the FOCUS export has a charge per tier

The FOCUS export reads ledger_charges (priced requests per UTC day × key × team × model × backend × region):
a day's flex, priority and standard requests of one model were one charge at one blended price, and what flex
saved or priority cost could not be told apart. The table is recreated with `service_tier` in its key ('' for
NULL, as every rollup stores a NULL dimension) and filled again from the ledger rows, so the days before this
revision are split by tier too (rows before 0018 have none: their charges are the same as before).

How it is filled: on a ledger whose rollups were kept (ledger_hourly holds rows), ledger_charges alone is added
up from the ledger in SQL frozen here, as a rebuild adds it up (a test compares the two); one GROUP BY over
the ledger, not the ~75-90 s per million rows of a full rebuild on SQLite. A ledger that comes from before
0009 has empty rollups: 0009 left filling them to the last migration that changes their shape, since
`rollup.rebuild` runs today's SQL, which reads ledger columns that later migrations add (0018's
`service_tier`); this one rebuilds them all. The downgrade recreates the table without the tier and adds it
up the same way.

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from margin.ledger import measures, rollup

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

KINDS = "('request', 'cache_hit')"
DIMS = {"key": "key_id", "team": "team", "model": "model", "backend": "backend", "region": "region"}
SUMS = {
    "requests": "COUNT(*)",
    "input_tokens": "SUM(input_tokens)",
    "output_tokens": "SUM(output_tokens)",
    "cost_nanousd": "SUM(cost_nanousd)",
    "energy_uj": "SUM(COALESCE(energy_uj, 0))",
    "co2e_ng": "SUM(COALESCE(co2e_ng, 0))",
    "energy_n": "SUM(CASE WHEN energy_uj IS NULL THEN 0 ELSE 1 END)",
    "co2e_n": "SUM(CASE WHEN co2e_ng IS NULL THEN 0 ELSE 1 END)",
}


def upgrade() -> None:
    bind = op.get_bind()
    rollup.lock(bind)  # no ingest adds a charge until the migration commits
    kept = bind.exec_driver_sql("SELECT 1 FROM ledger_hourly LIMIT 1").first() is not None
    recreate(tiers=True)
    if kept:
        add_up(tiers=True)
    else:
        today_s_measures(bind)
        rollup.rebuild(bind)


def today_s_measures(bind: sa.Connection) -> None:
    """The sums today's rebuild writes that a ledger's hourly and daily rollups lack: created by an older
    release's 0006/0009, they hold the measures of that release, and later ones (0028's `co2e_tokens`) made the
    rebuild fail with "no such column", so that the upgrade stopped here. Added as 0028 adds them (it then finds
    them present)."""
    for table in ("ledger_hourly", "ledger_daily"):
        present = {column["name"] for column in sa.inspect(bind).get_columns(table)}
        for name in measures.MEASURES:
            if name not in present:
                op.add_column(table, sa.Column(name, sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    rollup.lock(op.get_bind())
    recreate(tiers=False)
    add_up(tiers=False)


def dims(tiers: bool) -> dict[str, str]:
    """ledger_charges' key columns after the day, each with the ledger column it holds."""
    return DIMS | ({"service_tier": "service_tier"} if tiers else {})


def recreate(tiers: bool) -> None:
    """ledger_charges, empty, keyed by the service tier too or not (PostgreSQL cannot add a column to a
    primary key in place, and SQLite would copy the table to)."""
    op.drop_table("ledger_charges")
    op.create_table(
        "ledger_charges",
        sa.Column("day", sa.String(10), primary_key=True),
        *(sa.Column(name, sa.String(256), primary_key=True) for name in DIMS),
        *([sa.Column("service_tier", sa.String(16), primary_key=True)] if tiers else []),
        *(sa.Column(name, sa.BigInteger, nullable=False) for name in SUMS),
    )


def add_up(tiers: bool) -> None:
    """ledger_charges from the ledger's priced traffic rows, as a rebuild adds it up: NULL dimensions as ''."""
    if op.get_bind().dialect.name == "sqlite":
        day = "strftime('%Y-%m-%d', created_at)"
    else:
        day = "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    keys = dims(tiers)
    names = ", ".join(["day", *keys, *SUMS])
    values = ", ".join([day, *(f"COALESCE(\"{column}\", '')" for column in keys.values()), *SUMS.values()])
    groups = ", ".join(str(i + 1) for i in range(len(keys) + 1))
    op.execute(
        f"INSERT INTO ledger_charges ({names}) SELECT {values} FROM ledger "
        f"WHERE kind IN {KINDS} AND cost_nanousd IS NOT NULL GROUP BY {groups}"
    )
