"""read model: the tokens of the requests with a carbon figure (`co2e_tokens`) and with an energy figure
(`energy_tokens`) in ledger_hourly and ledger_daily

Carbon per 1K tokens divided a group's carbon by all its tokens, those of hosted requests without an energy
model too (their carbon is unknown, not zero): a region of 100 local tokens at 1 g and 9,900 hosted tokens read
0.1 g per 1K instead of 10. The two rollups get the two sums (measures.MEASURES), which ingest adds up batch by
batch from here on; the rows already rolled up are added up here, per rollup row, from the ledger
rows in SQL of this file (margin.ledger.measures' hour, day and tag expressions, which the rollups group by):
one pass over the traffic rows with a figure into a temporary table (each rollup key computed once), then one
GROUP BY of it per rollup dimension; not a full rebuild (200,000 rows: 4.7 s on SQLite, 5.6 s on PostgreSQL,
against 11.4 and 8.9 s reading the ledger once per dimension).

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


FIGURED = "ledger_0028_figured"  # the traffic rows with a figure, each rollup key computed once (a temporary table)


def _figured(bind: sa.Connection, tag_dims: list[str]) -> dict[str, str]:
    """FIGURED: one pass over the ledger (each row's hour, day, dimensions and tag values, NULL as ''), so each
    rollup dimension's GROUP BY reads plain columns, not JSON and dates again. Returns the daily dimensions'
    columns in it."""
    dialect = bind.dialect.name
    columns = {name: f"COALESCE(r.{name}, '')" for name in HOURLY}
    columns |= {f"d_{dim}": f"COALESCE(r.\"{column}\", '')" for dim, column in DAILY_COLUMNS.items()}
    columns["d_error"] = "(CAST(r.http_status AS TEXT) || ' ' || COALESCE(r.error_code, ''))"
    # a tag as the rollup stores it: a JSON number 42 and a string "42" are one value, '42'
    tags = {dim: f"t{i}" for i, dim in enumerate(tag_dims)}
    columns |= {
        column: f"COALESCE(CAST({measures.tag(dialect, 'r', dim)} AS TEXT), '')" for dim, column in tags.items()
    }
    select = ", ".join(f"{sql} AS {name}" for name, sql in columns.items())
    sums = ", ".join(f"CASE WHEN {figure} IS NULL THEN 0 ELSE {TOKENS} END AS {name}" for name, figure in SUMS.items())
    figured = " OR ".join(f"{figure} IS NOT NULL" for figure in SUMS.values())
    bind.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {FIGURED} AS SELECT {measures.hour(dialect, 'r')} AS hour, "
        f"{measures.day(dialect, 'r')} AS day, {select}, {sums} FROM ledger r "
        f"WHERE r.kind IN {measures.KINDS_SQL} AND ({figured})"
    )
    return {
        "": "''",
        **{dim: dim for dim in DAILY_CORE if dim},
        **{dim: f"d_{dim}" for dim in (*DAILY_COLUMNS, "error")},
    } | tags


def _fill(table: str, keys: dict[str, str], where: str = "true") -> None:
    """`table`'s sums from FIGURED, grouped by `keys` (each rollup key column: its SQL on FIGURED)."""
    select = ", ".join(f"{sql} AS k_{name}" for name, sql in keys.items())
    groups = ", ".join(str(i + 1) for i in range(len(keys)))
    sums = ", ".join(f"SUM({name}) AS {name}" for name in SUMS)
    source = f"SELECT {select}, {sums} FROM {FIGURED} GROUP BY {groups}"
    sets = ", ".join(f"{name} = s.{name}" for name in SUMS)
    match = " AND ".join(f"{table}.{name} = s.k_{name}" for name in keys)
    op.execute(f"UPDATE {table} SET {sets} FROM ({source}) s WHERE {match} AND {where}")


def add_up(bind: sa.Connection) -> None:
    """Every ledger_hourly and ledger_daily row's sums, as ingest adds them up (NULL dimensions as '')."""
    dims = [row[0] for row in bind.exec_driver_sql("SELECT DISTINCT dim FROM ledger_daily")]
    known = {"", *DAILY_CORE, *DAILY_COLUMNS, "error"}
    tag_dims = sorted(dim for dim in dims if dim not in known)  # the rolled-up tag keys: per team and across
    values = _figured(bind, tag_dims)
    _fill("ledger_hourly", {"hour": "hour", **{name: name for name in HOURLY}})
    for dim in dims:
        keys = {"dim": f"'{dim}'", "day": "day", "kind": "kind", "team": "team", "value": values[dim]}
        _fill("ledger_daily", keys, f"ledger_daily.dim = '{dim}'")
        if dim in tag_dims:
            _fill("ledger_daily", {**keys, "team": f"'{EVERY_TEAM}'"}, f"ledger_daily.dim = '{dim}'")
    bind.exec_driver_sql(f"DROP TABLE {FIGURED}")
