"""`ledger_hourly`: an hourly rollup of the ledger by (hour, kind, team, model, backend), kept exact by an
AFTER INSERT trigger (the ledger is append-only and its inserts are ON CONFLICT DO NOTHING, so a replayed
row never fires it). PROPOSED, NOT YET A MIGRATION: `DDL` is what a migration should create (SQLite; a
Postgres version needs a plpgsql trigger) plus `backfill()`. benchmarks/dashboard_load.py and the tests
create it with `install()`. When the table exists, the dashboard reads totals, trends and the team / model /
backend tables from it: whole hours from the rollup, the partial first hour of the window from the ledger,
so the figures stay exactly those of `margin report`. Feature/customer tables and latency percentiles always
read the ledger."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from margin.dashboard.queries import Scope

TABLE = "ledger_hourly"
KEYS = ("team", "model", "backend")  # breakdowns the rollup can answer (plus totals, hour and day)
MEASURES = {  # rollup column -> its value for one new ledger row (SQLite, NEW.*)
    "requests": "1",
    "errors": "NEW.http_status >= 400",
    "input_tokens": "NEW.input_tokens",
    "output_tokens": "NEW.output_tokens",
    "cost_nanousd": "coalesce(NEW.cost_nanousd, 0)",
    "unpriced": "NEW.cost_nanousd IS NULL",
    "priced_tokens": "CASE WHEN NEW.cost_nanousd IS NULL THEN 0 ELSE NEW.input_tokens + NEW.output_tokens END",
    "energy_j": "coalesce(NEW.energy_j, 0.0)",
    "co2e_g": "coalesce(NEW.co2e_g, 0.0)",
    "cache_hits": "NEW.kind = 'cache_hit'",
    "cache_saved_nanousd": "coalesce(NEW.saved_nanousd, 0)",
    "routing_saved_nanousd": "coalesce(NEW.counterfactual_nanousd - NEW.cost_nanousd, 0)",
    "routed": "NEW.counterfactual_nanousd IS NOT NULL",
    "backend_ms": "coalesce(NEW.backend_ms, 0.0)",
}
_FLOATS = ("energy_j", "co2e_g", "backend_ms")


def _ddl() -> list[str]:
    measures = ", ".join(f"{name} {'REAL' if name in _FLOATS else 'INTEGER'} NOT NULL" for name in MEASURES)
    names = ", ".join(MEASURES)
    values = ", ".join(MEASURES.values())
    updates = ", ".join(f"{name} = {name} + excluded.{name}" for name in MEASURES)
    return [
        f"CREATE TABLE IF NOT EXISTS {TABLE} (hour TEXT NOT NULL, kind TEXT NOT NULL, team TEXT NOT NULL, "
        f"model TEXT NOT NULL, backend TEXT NOT NULL, {measures}, PRIMARY KEY (hour, kind, team, model, backend))",
        f"CREATE TRIGGER IF NOT EXISTS {TABLE}_insert AFTER INSERT ON ledger "
        "WHEN NEW.kind IN ('request', 'cache_hit') BEGIN "
        f"INSERT INTO {TABLE} (hour, kind, team, model, backend, {names}) VALUES (substr(NEW.created_at, 1, 13), "
        f"NEW.kind, coalesce(NEW.team, ''), coalesce(NEW.model, ''), coalesce(NEW.backend, ''), {values}) "
        f"ON CONFLICT (hour, kind, team, model, backend) DO UPDATE SET {updates}; END",
    ]


DDL = _ddl()


def backfill_sql() -> str:
    """Fill the rollup from the rows already in the ledger (run once, with the trigger, in one transaction)."""
    old = {name: value.replace("NEW.", "") for name, value in MEASURES.items()}
    sums = ", ".join(f"sum({value})" for value in old.values())
    return (
        f"INSERT INTO {TABLE} (hour, kind, team, model, backend, {', '.join(MEASURES)}) "
        "SELECT substr(created_at, 1, 13), kind, coalesce(team, ''), coalesce(model, ''), coalesce(backend, ''), "
        f"{sums} FROM ledger WHERE kind IN ('request', 'cache_hit') GROUP BY 1, 2, 3, 4, 5"
    )


def install(connection: sa.Connection) -> None:
    """Create the table and trigger and backfill (SQLite only; what the proposed migration would do)."""
    if connection.dialect.name != "sqlite":
        raise NotImplementedError("the ledger_hourly rollup is only written for SQLite so far")
    for statement in DDL:
        connection.exec_driver_sql(statement)
    connection.exec_driver_sql(f"DELETE FROM {TABLE}")
    connection.exec_driver_sql(backfill_sql())


def available(connection: sa.Connection, scope: Scope, by: str) -> bool:
    """Whether this question can be answered from the rollup."""
    if scope.key_id is not None or by not in (*KEYS, "hour", "day"):
        return False
    return connection.dialect.name == "sqlite" and _exists(connection)


def _table() -> sa.TableClause:
    return sa.table(TABLE, *(sa.column(name) for name in ("hour", "kind", "team", "model", "backend", *MEASURES)))


def _hour(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H")


def _key(table: sa.TableClause, by: str) -> Any:
    if by == "day":
        return sa.func.substr(table.c.hour, 1, 10)
    if by == "hour":
        return table.c.hour
    return sa.func.nullif(table.c[by], "")  # '' stands for NULL in the rollup's key


def grouped(
    connection: sa.Connection,
    scope: Scope,
    by: str,
    from_ledger: Callable[[Scope], list[tuple[Any, dict[str, Any]]]],
    request_only: bool = False,
) -> list[tuple[Any, dict[str, Any]]]:
    """(key, additive sums) per group: whole hours from the rollup, the window's partial first hour (and any
    `until`) from the ledger through `from_ledger`."""
    table = _table()
    key = _key(table, by).label("key")
    clauses: list[Any] = [table.c.kind == "request"] if request_only else []
    found: dict[Any, dict[str, Any]] = {}
    parts: list[tuple[Any, dict[str, Any]]] = []
    if scope.since is not None:
        first_full = scope.since.replace(minute=0, second=0, microsecond=0)
        if first_full < scope.since:
            first_full += timedelta(hours=1)
            parts += from_ledger(replace(scope, until=first_full))
        clauses.append(table.c.hour >= _hour(first_full))
    if scope.until is not None:
        raise NotImplementedError("the dashboard's windows end now")
    if scope.team is not None:
        clauses.append(table.c.team == scope.team)
    sums = [sa.func.coalesce(sa.func.sum(table.c[name]), 0).label(name) for name in MEASURES]
    query = sa.select(key, *sums).where(*clauses).group_by(key)
    parts += [(row.key, dict(row._mapping)) for row in connection.execute(query)]
    for group, raw in parts:
        into = found.get(group)
        if into is None:
            found[group] = {name: raw.get(name, 0) or 0 for name in MEASURES}
        else:
            for name in MEASURES:
                into[name] += raw.get(name, 0) or 0
    return list(found.items())


def answers_budget(connection: sa.Connection, kind: str) -> bool:
    return kind in ("global", "team", "model") and connection.dialect.name == "sqlite" and _exists(connection)


def budget_spent(
    connection: sa.Connection, kind: str, value: str | None, usd: bool, start: datetime | None, end: datetime | None
) -> int:
    """A budget window's spend (requests only, as the admission counters reconcile) from whole hours."""
    table = _table()
    measure = table.c.cost_nanousd if usd else table.c.input_tokens + table.c.output_tokens
    clauses: list[Any] = [table.c.kind == "request"]
    if start is not None and end is not None:
        clauses += [table.c.hour >= _hour(start.astimezone(UTC)), table.c.hour < _hour(end.astimezone(UTC))]
    if kind != "global":
        clauses.append(table.c[kind] == value)
    return int(connection.execute(sa.select(sa.func.coalesce(sa.func.sum(measure), 0)).where(*clauses)).scalar_one())


def _exists(connection: sa.Connection) -> bool:
    return sa.inspect(connection).has_table(TABLE)
