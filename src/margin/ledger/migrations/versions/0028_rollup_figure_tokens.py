"""read model: the tokens of the requests with a carbon figure (`co2e_tokens`) and with an energy figure
(`energy_tokens`) in ledger_hourly and ledger_daily

Carbon per 1K tokens divided a group's carbon by all its tokens, those of hosted requests without an energy
model too (their carbon is unknown, not zero): a region of 100 local tokens at 1 g and 9,900 hosted tokens read
0.1 g per 1K instead of 10. The two rollups get the two sums (measures.MEASURES), which ingest adds up batch by
batch from here on; the rows already rolled up are added up here, per rollup row, from the ledger rows in SQL
frozen in this file (one GROUP BY over the traffic rows with a figure per rollup dimension, not a full rebuild).

A ledger migrated from before 0006 (ledger_daily) or 0009 (ledger_hourly) has the columns already: those
revisions create the tables from today's declarations, and 0019 fills them with today's rebuild; adding them
up again here gives the same integers.

Revision ID: 0028
Revises: 0027
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from margin.ledger import measures, rollup

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None

TOKENS = "r.input_tokens + r.output_tokens"
SUMS = {"co2e_tokens": "r.co2e_ng", "energy_tokens": "r.energy_uj"}  # the sum, and the figure a row needs
HOURLY = ("kind", "team", "org", "model", "backend", "region")
DAILY_CORE = ("", "model", "backend", "region", "org")  # the daily dimensions of 0019's shape, per team only
DAILY_COLUMNS = {"key": "key_id", "endpoint": "endpoint", "status": "status", "user": "user"}
EVERY_TEAM = "*"


def upgrade() -> None:
    bind = op.get_bind()
    rollup.lock(bind)  # no ingest adds to a rollup until the migration commits
    for table in ("ledger_hourly", "ledger_daily"):
        present = {c["name"] for c in sa.inspect(bind).get_columns(table)}
        for name in SUMS:
            if name not in present:
                op.add_column(table, sa.Column(name, sa.BigInteger, nullable=False, server_default="0"))
    add_up(bind)


def downgrade() -> None:
    for table in ("ledger_hourly", "ledger_daily"):
        with op.batch_alter_table(table) as batch:
            for name in SUMS:
                batch.drop_column(name)


def _sums() -> str:
    return ", ".join(
        f"SUM(CASE WHEN {figure} IS NULL THEN 0 ELSE {TOKENS} END) AS {name}" for name, figure in SUMS.items()
    )


def _fill(table: str, keys: dict[str, str], where: str = "true") -> None:
    """`table`'s sums from the traffic rows, grouped by `keys` (the rollup's key column: its SQL on row `r`)."""
    select = ", ".join(f"{sql} AS k_{name}" for name, sql in keys.items())
    groups = ", ".join(str(i + 1) for i in range(len(keys)))
    figured = " OR ".join(f"{figure} IS NOT NULL" for figure in SUMS.values())
    source = (
        f"SELECT {select}, {_sums()} FROM ledger r WHERE r.kind IN {measures.KINDS_SQL} AND ({figured}) "
        f"GROUP BY {groups}"
    )
    sets = ", ".join(f"{name} = s.{name}" for name in SUMS)
    match = " AND ".join(f"{table}.{name} = s.k_{name}" for name in keys)
    op.execute(f"UPDATE {table} SET {sets} FROM ({source}) s WHERE {match} AND {where}")


def add_up(bind: sa.Connection) -> None:
    """Every ledger_hourly and ledger_daily row's sums, as ingest adds them up (NULL dimensions as '')."""
    dialect = bind.dialect.name
    blank = {name: f"COALESCE(r.{name}, '')" for name in HOURLY}
    _fill("ledger_hourly", {"hour": measures.hour(dialect, "r"), **blank})
    day = {"day": measures.day(dialect, "r"), "kind": blank["kind"]}
    dims = [row[0] for row in bind.exec_driver_sql("SELECT DISTINCT dim FROM ledger_daily")]
    for dim in dims:
        if dim == "":
            value = "''"
        elif dim in DAILY_COLUMNS:
            value = f"COALESCE(r.\"{DAILY_COLUMNS[dim]}\", '')"
        elif dim == "error":
            value = "(CAST(r.http_status AS TEXT) || ' ' || COALESCE(r.error_code, ''))"
        elif dim in DAILY_CORE:
            value = blank[dim]
        else:  # a rolled-up tag key: per team and across every team
            # as the rollup stores it: a JSON number 42 and a string "42" are one value, '42'
            value = f"COALESCE(CAST({measures.tag(dialect, 'r', dim)} AS TEXT), '')"
            every = {**day, "team": f"'{EVERY_TEAM}'", "value": value}
            _fill("ledger_daily", {"dim": f"'{dim}'", **every}, f"ledger_daily.dim = '{dim}'")
        keys = {"dim": f"'{dim}'", **day, "team": blank["team"], "value": value}
        _fill("ledger_daily", keys, f"ledger_daily.dim = '{dim}'")
