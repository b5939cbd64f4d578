"""Dashboard reads of the hourly rollup `ledger_hourly` (margin.ledger.rollup: hour × kind × team × model ×
backend × region, kept by an insert trigger on SQLite and PostgreSQL, migration 0004).

The dashboard's windows end now and start at any minute (`since=24h`), so a window is read as: its whole
hours from the rollup plus its partial first hour from the ledger rows (the time index makes that cheap).
The sums are therefore exactly those of `margin report`. Groupings outside the rollup's dimensions
(feature, customer, key) and latency percentiles read the ledger."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from margin.ledger.models import ledger_hourly

if TYPE_CHECKING:
    from margin.dashboard.queries import Scope

TABLE = "ledger_hourly"
KEYS = ("team", "model", "backend")  # breakdowns the rollup answers (plus hour and day buckets)
# the dashboard's additive sums (queries.SUM_LABELS, + busy_ms) -> the rollup's measure
MEASURES = {
    "requests": "requests",
    "errors": "errors",
    "input_tokens": "input_tokens",
    "output_tokens": "output_tokens",
    "cost_nanousd": "cost_nanousd",
    "unpriced": "unpriced",
    "priced_tokens": "priced_tokens",
    "energy_j": "energy_j",
    "co2e_g": "co2e_g",
    "cache_hits": "cache_hits",
    "cache_saved_nanousd": "saved_nanousd",
    "routing_saved_nanousd": "routing_saved_nanousd",
    "routed": "routed",
    "busy_ms": "busy_ms",
}


def _exists(connection: sa.Connection) -> bool:
    return sa.inspect(connection).has_table(TABLE)


def available(connection: sa.Connection, scope: Scope, by: str) -> bool:
    """Whether this question can be answered from the rollup."""
    if scope.key_id is not None or scope.until is not None or by not in (*KEYS, "hour", "day"):
        return False
    if scope.team is not None:  # a team view is one org's team: the rollup has no org
        return False
    return _exists(connection)


def _hour(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:00:00")


def _key(by: str) -> Any:
    hour = ledger_hourly.c.hour  # `2026-11-26T08:00:00`
    if by == "day":  # the ledger path's buckets: `2026-11-26` and `2026-11-26 08`
        return sa.func.substr(hour, 1, 10)
    if by == "hour":
        return sa.func.substr(hour, 1, 10) + " " + sa.func.substr(hour, 12, 2)
    return sa.func.nullif(ledger_hourly.c[by], sa.literal_column("''"))  # '' stands for NULL


def grouped(
    connection: sa.Connection,
    scope: Scope,
    by: str,
    from_ledger: Callable[[Scope], list[tuple[Any, dict[str, Any]]]],
    request_only: bool = False,
) -> list[tuple[Any, dict[str, Any]]]:
    """(key, additive sums) per group: whole hours from the rollup, the partial first hour from the ledger
    through `from_ledger` (which must return the same sums, named as MEASURES' keys)."""
    key = _key(by).label("key")
    clauses: list[Any] = [ledger_hourly.c.kind == "request"] if request_only else []
    parts: list[tuple[Any, dict[str, Any]]] = []
    if scope.since is not None:
        first_full = scope.since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        if first_full < scope.since:
            first_full += timedelta(hours=1)
            parts += from_ledger(replace(scope, until=first_full))
        clauses.append(ledger_hourly.c.hour >= _hour(first_full))
    if scope.team is not None:
        clauses.append(ledger_hourly.c.team == scope.team)
    sums = [sa.func.coalesce(sa.func.sum(ledger_hourly.c[col]), 0).label(name) for name, col in MEASURES.items()]
    query = sa.select(key, *sums).where(*clauses).group_by(key)
    parts += [(row.key, dict(row._mapping)) for row in connection.execute(query)]
    found: dict[Any, dict[str, Any]] = {}
    for group, raw in parts:
        into = found.setdefault(group, dict.fromkeys(MEASURES, 0))
        for name in MEASURES:
            into[name] += raw.get(name) or 0
    return list(found.items())


def answers_budget(connection: sa.Connection, kind: str) -> bool:
    return kind in ("global", "team", "model", "backend") and _exists(connection)


def budget_spent(
    connection: sa.Connection, kind: str, value: str | None, usd: bool, start: datetime | None, end: datetime | None
) -> int:
    """A budget window's spend (requests only, as the admission counters reconcile); budget windows are whole
    hours (hour, day, month) or the whole ledger (lifetime)."""
    table = ledger_hourly
    measure = table.c.cost_nanousd if usd else table.c.input_tokens + table.c.output_tokens
    clauses: list[Any] = [table.c.kind == "request"]
    if start is not None and end is not None:
        clauses += [table.c.hour >= _hour(start), table.c.hour < _hour(end)]
    if kind != "global":
        clauses.append(table.c[kind] == value)
    return int(connection.execute(sa.select(sa.func.coalesce(sa.func.sum(measure), 0)).where(*clauses)).scalar_one())
