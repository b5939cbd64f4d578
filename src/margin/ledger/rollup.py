"""The rollups, kept per ingested batch: `apply(connection, source)` adds one batch of new ledger rows (a staging
table, see margin.ledger.ingest) to every rollup table with a few `INSERT … SELECT … GROUP BY … ON CONFLICT DO
UPDATE SET x = x + excluded.x` statements, in the caller's transaction. No per-row Python, no trigger.

- ledger_hourly  per UTC hour × kind × team × org × model × backend × region: every sum (measures.MEASURES)
- ledger_daily   per dimension × UTC day × kind × team, for the key, endpoint, status, error and each rolled-up
                 tag key (ledger_rollup_keys, from `tags.rollup_keys`): the same sums
- ledger_latency latency histograms (e2e, TTFT) per dimension × UTC day; per team for all rows and per model
- ledger_attach  customers seen per feature per UTC day (distinct counts for the attach rate)
- ledger_tasks   one row per task: anchor (its earliest request: time, team, key, model, feature, customer…),
                 requests, cost, unpriced requests
- ledger_charges priced requests per UTC day × key × team × model × backend × region (the FOCUS export)
- ledger_task_daily  tasks, cost and unpriced requests per anchor day × team × anchor dimension: a batch first
                 takes out the current contribution of every task it touches, updates ledger_tasks, then puts
                 the new one back (a task's anchor moves when an earlier request of it arrives later)

Why days for the tag dimensions: a tag such as `customer` has hundreds of values; per hour × team it has about
one row per request and a rollup saves nothing (measured on 1M synthetic rows: 999,851 rollup rows for
1M requests), per day it has ~10x fewer rows than the ledger. Windows are read as whole buckets from the
rollups plus their partial edges from the ledger rows (margin.ledger.read.plan).

`rebuild(connection, tag_keys)` recomputes everything from the ledger (after rows were edited by hand, or to
roll up other tag keys): `margin db rebuild-rollups`. Changing MEASURES or the dimensions needs a migration
that recreates the tables (0005 creates them from these definitions) and rebuilds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from margin.ledger import measures as m
from margin.ledger.models import (
    ledger_attach,
    ledger_charges,
    ledger_daily,
    ledger_hourly,
    ledger_latency,
    ledger_rollup_keys,
    ledger_task_daily,
    ledger_tasks,
)

DEFAULT_TAG_KEYS = ("feature", "customer")
ROLLUPS = (ledger_hourly, ledger_daily, ledger_latency, ledger_attach, ledger_tasks, ledger_task_daily, ledger_charges)
CHARGE_DIMS = {"key": "key_id", "team": "team", "model": "model", "backend": "backend", "region": "region"}
TASK_DIMS = {"": "''", "feature": "t.feature", "customer": "t.customer", "model": "t.model", "backend": "t.backend",
             "region": "t.region", "key": "t.key_id"}  # fmt: skip


def _sums(dialect: str, r: str) -> list[str]:
    return [f"SUM({m.measure(name, dialect, r)})" for name in m.MEASURES]


def _add(table: str, keys: Sequence[str], columns: Sequence[str]) -> str:
    updates = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in columns)
    return f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"


def _hourly(dialect: str, source: str) -> str:
    dims = [m.hour(dialect, "s"), *(f"COALESCE(s.\"{d}\", '')" for d in m.HOURLY_DIMS)]
    keys = ["hour", *m.HOURLY_DIMS]
    first = (
        "first_at = CASE WHEN excluded.first_at < ledger_hourly.first_at "
        "THEN excluded.first_at ELSE ledger_hourly.first_at END"
    )
    return (
        f"INSERT INTO ledger_hourly ({', '.join([*keys, *m.MEASURES, 'first_at'])}) "
        f"SELECT {', '.join([*dims, *_sums(dialect, 's'), 'MIN(s.created_at)'])} FROM {source} s "
        f"WHERE s.kind IN {m.KINDS_SQL} GROUP BY {', '.join(str(i + 1) for i in range(len(dims)))} "
        f"{_add('ledger_hourly', keys, list(m.MEASURES))}, {first}"
    )


def _daily(dialect: str, source: str, tag_keys: Sequence[str]) -> str:
    rows = [f"s.{name}" for name in ("kind", "team")]
    per_row = ", ".join(f"{m.measure(name, dialect, 's')} AS {name}" for name in m.MEASURES)

    def value(dim: str) -> str:
        return "''" if dim == "" else f"COALESCE({m.group(dialect, 's', dim)}, '')"

    branches = [
        f"SELECT '{dim}' AS dim, {m.day(dialect, 's')} AS day, {rows[0]} AS kind, COALESCE({rows[1]}, '') AS team, "
        f"{value(dim)} AS value, {per_row} FROM {source} s WHERE s.kind IN {m.KINDS_SQL}"
        for dim in (*m.DAILY_CORE, *m.DAILY_DIMS, *tag_keys)
    ]
    keys = ["dim", "day", "kind", "team", "value"]
    sums = ", ".join(f"SUM(u.{name})" for name in m.MEASURES)
    return (
        f"INSERT INTO ledger_daily ({', '.join([*keys, *m.MEASURES])}) "
        f"SELECT u.dim, u.day, u.kind, u.team, u.value, {sums} FROM ({' UNION ALL '.join(branches)}) u "
        f"WHERE true GROUP BY u.dim, u.day, u.kind, u.team, u.value {_add('ledger_daily', keys, list(m.MEASURES))}"
    )


def _latency(dialect: str, source: str, tag_keys: Sequence[str]) -> str:
    branches = []
    for dim in (*m.HISTOGRAM_DIMS, *tag_keys):
        value = "''" if dim == "" else f"COALESCE({m.group(dialect, 's', dim)}, '')"
        team = "COALESCE(s.team, '')" if dim in m.TEAM_HISTOGRAMS else "'*'"
        for metric, column in m.METRICS.items():
            branches.append(
                f"SELECT '{dim}' AS dim, {m.day(dialect, 's')} AS day, {team} AS team, {value} AS value, "
                f"'{metric}' AS metric, {m.latency_bin(f's.{column}')} AS bin FROM {source} s "
                f"WHERE s.kind IN {m.KINDS_SQL} AND s.{column} IS NOT NULL"
            )
    keys = ["dim", "metric", "day", "team", "value", "bin"]
    return (
        f"INSERT INTO ledger_latency ({', '.join([*keys, 'n'])}) "
        f"SELECT u.dim, u.metric, u.day, u.team, u.value, u.bin, COUNT(*) FROM ({' UNION ALL '.join(branches)}) u "
        f"WHERE true GROUP BY u.dim, u.metric, u.day, u.team, u.value, u.bin {_add('ledger_latency', keys, ['n'])}"
    )


def _attach(dialect: str, source: str) -> str:
    feature, customer = m.tag(dialect, "s", "feature"), m.tag(dialect, "s", "customer")
    return (
        "INSERT INTO ledger_attach (day, feature, customer, requests) "
        f"SELECT {m.day(dialect, 's')}, COALESCE({feature}, ''), COALESCE({customer}, ''), COUNT(*) "
        f"FROM {source} s WHERE s.kind IN {m.KINDS_SQL} GROUP BY 1, 2, 3 "
        f"{_add('ledger_attach', ['day', 'feature', 'customer'], ['requests'])}"
    )


def _charges(dialect: str, source: str) -> str:
    dims = [f"COALESCE(s.{column}, '')" for column in CHARGE_DIMS.values()]
    sums = ["COUNT(*)", "SUM(s.input_tokens)", "SUM(s.output_tokens)", "SUM(s.cost_nanousd)"]
    sums += ["SUM(COALESCE(s.energy_uj, 0))", "SUM(COALESCE(s.co2e_ng, 0))", "COUNT(s.energy_uj)", "COUNT(s.co2e_ng)"]
    names = ["requests", "input_tokens", "output_tokens", "cost_nanousd", "energy_uj", "co2e_ng", "energy_n", "co2e_n"]
    keys = ["day", *CHARGE_DIMS]
    return (
        f"INSERT INTO ledger_charges ({', '.join([*keys, *names])}) "
        f"SELECT {', '.join([m.day(dialect, 's'), *dims, *sums])} FROM {source} s "
        f"WHERE s.kind IN {m.KINDS_SQL} AND s.cost_nanousd IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6 "
        f"{_add('ledger_charges', keys, names)}"
    )


TASK_ANCHOR = ("team", "key_id", "model", "backend", "region", "feature", "customer")


def _tasks(dialect: str, source: str, order: str) -> str:
    """One row per task of the batch (its earliest request is the anchor), added to the task's row."""
    task = m.task(dialect, "s")
    over = f"OVER (PARTITION BY {task})"
    columns = ", ".join(f"s.{c}" for c in TASK_ANCHOR[:5])
    inner = (
        f"SELECT {task} AS task, s.created_at AS anchor_at, {columns}, {m.tag(dialect, 's', 'feature')} AS feature, "
        f"{m.tag(dialect, 's', 'customer')} AS customer, "
        f"ROW_NUMBER() OVER (PARTITION BY {task} ORDER BY s.created_at, s.{order}) AS pick, "
        f"COUNT(*) {over} AS requests, "
        f"SUM(COALESCE(s.cost_nanousd, 0)) {over} AS cost_nanousd, "
        f"SUM(CASE WHEN s.cost_nanousd IS NULL THEN 1 ELSE 0 END) {over} AS unpriced "
        f"FROM {source} s WHERE s.kind IN {m.KINDS_SQL}"
    )
    names = ["task", "anchor_at", *TASK_ANCHOR, "requests", "cost_nanousd", "unpriced"]
    earlier = "excluded.anchor_at < ledger_tasks.anchor_at"
    moved = ", ".join(
        f"{c} = CASE WHEN {earlier} THEN excluded.{c} ELSE ledger_tasks.{c} END" for c in ("anchor_at", *TASK_ANCHOR)
    )
    return (
        f"INSERT INTO ledger_tasks ({', '.join(names)}) SELECT {', '.join(f't.{c}' for c in names)} "
        f"FROM ({inner}) t WHERE t.pick = 1 "
        f"{_add('ledger_tasks', ['task'], ['requests', 'cost_nanousd', 'unpriced'])}, {moved}"
    )


def _task_days(dialect: str, source: str, sign: int) -> str:
    """Add (sign 1) or take out (-1) the ledger_task_daily contribution of the tasks `source` touches."""
    touched = "" if source == "ledger" else f" WHERE t.task IN (SELECT {m.task(dialect, 's')} FROM {source} s)"
    day = m.day(dialect, "t", "anchor_at")
    branches = [
        f"SELECT '{dim}' AS dim, {day} AS day, COALESCE(t.team, '') AS team, COALESCE({value}, '') AS value, "
        f"{sign} AS tasks, {sign} * t.cost_nanousd AS cost_nanousd, {sign} * t.unpriced AS unpriced "
        f"FROM ledger_tasks t{touched}"
        for dim, value in TASK_DIMS.items()
    ]
    keys, sums = ["dim", "day", "team", "value"], ["tasks", "cost_nanousd", "unpriced"]
    return (
        f"INSERT INTO ledger_task_daily ({', '.join([*keys, *sums])}) SELECT u.dim, u.day, u.team, u.value, "
        f"SUM(u.tasks), SUM(u.cost_nanousd), SUM(u.unpriced) FROM ({' UNION ALL '.join(branches)}) u WHERE true "
        f"GROUP BY u.dim, u.day, u.team, u.value {_add('ledger_task_daily', keys, sums)}"
    )


def statements(dialect: str, source: str, order: str, tag_keys: Sequence[str]) -> list[str]:
    for key in tag_keys:
        m.check_tag_key(key)
    tasks = [_tasks(dialect, source, order), _task_days(dialect, source, 1)]
    if source != "ledger":  # a rebuild starts from empty task tables
        tasks.insert(0, _task_days(dialect, source, -1))
    return [
        _hourly(dialect, source),
        _daily(dialect, source, tag_keys),
        _latency(dialect, source, tag_keys),
        _attach(dialect, source),
        _charges(dialect, source),
        *tasks,
    ]


def rolled_up_keys(connection: sa.Connection) -> tuple[str, ...]:
    """The tag keys ledger_daily and ledger_latency hold (in the order they were set)."""
    rows = connection.execute(sa.select(ledger_rollup_keys.c.tag_key).order_by(ledger_rollup_keys.c.tag_key))
    return tuple(row[0] for row in rows)


def apply(connection: sa.Connection, source: str, order: str = "_seq") -> None:
    """Add the rows of `source` (a table of ledger rows just inserted, none of them counted before) to every
    rollup. `order` breaks ties between a task's requests of the same instant (the batch's order)."""
    dialect = connection.dialect.name
    for statement in statements(dialect, source, order, rolled_up_keys(connection)):
        connection.exec_driver_sql(statement)


def rebuild(connection: sa.Connection, tag_keys: Sequence[str] | None = None) -> dict[str, int]:
    """Recompute every rollup from the ledger (and set which tag keys are rolled up); returns row counts."""
    keys = tuple(dict.fromkeys(tag_keys)) if tag_keys is not None else rolled_up_keys(connection)
    for table in (*ROLLUPS, ledger_rollup_keys):
        connection.execute(sa.delete(table))
    if keys:
        connection.execute(ledger_rollup_keys.insert(), [{"tag_key": m.check_tag_key(k)} for k in keys])
    apply(connection, "ledger", order="id")
    return sizes(connection)


def sizes(connection: sa.Connection) -> dict[str, int]:
    """Rows in each rollup table (their cardinality)."""
    out: dict[str, int] = {}
    for table in ROLLUPS:
        out[table.name] = int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
    return out


def describe() -> dict[str, Any]:
    """What the rollups hold, for benchmark and docs output."""
    return {
        "hourly_dims": list(m.HOURLY_DIMS),
        "daily_dims": [*m.DAILY_DIMS, "<tag keys>"],
        "histogram_dims": [d or "all" for d in m.HISTOGRAM_DIMS] + ["<tag keys>"],
        "histogram_relative_error": round(m.RELATIVE_ERROR, 5),
    }
