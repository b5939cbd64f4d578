"""Additive sums (margin.ledger.measures.MEASURES, all integers) per group, from the rollups where the
planner can and from ledger rows for the rest; the parts are added up in Python (a few rows each)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from margin.errors import InvalidRequest
from margin.ledger import measures as m
from margin.ledger.measures import HOURLY_DIMS
from margin.ledger.models import ledger, ledger_daily, ledger_hourly, ledger_rollup_keys
from margin.ledger.read.plan import Part, grain_for, plan, plan_days_then_hours
from margin.ledger.read.window import Window, as_utc

Sums = dict[str, int]
Match = tuple[str, str | tuple[str, ...]]  # (dimension, value or values): only rows where it holds (budget scopes)
BUCKETS = ("hour", "day")


def tag_keys(connection: sa.Connection) -> tuple[str, ...]:
    """Tag keys the daily rollups hold."""
    return tuple(row[0] for row in connection.execute(sa.select(ledger_rollup_keys.c.tag_key)))


def zero() -> Sums:
    return dict.fromkeys(m.MEASURES, 0)


def add(into: Sums, more: Mapping[Any, Any]) -> Sums:
    for name in m.MEASURES:
        into[name] += int(more.get(name) or 0)
    return into


def total(parts: Iterable[Sums]) -> Sums:
    out = zero()
    for part in parts:
        add(out, part)
    return out


def minus(whole: Sums, part: Sums) -> Sums:
    """What is left of `whole` without `part` (the groups not listed: the totals less the listed groups)."""
    return {name: whole[name] - part[name] for name in m.MEASURES}


def _is(column: sa.ColumnElement[Any], value: str | tuple[str, ...]) -> sa.ColumnElement[bool]:
    """A match's clause: the value, or any of the values (a tuple: `IN`, e.g. the margin page's revenue rules)."""
    return column.in_(value) if isinstance(value, tuple) else column == value


def _text(connection: sa.Connection, by: str) -> str:
    """SQL of a grouping on ledger rows: a column, a time bucket (ISO start), `error` or a tag key. A tag's value
    is read as the rollups hold it: text, '' as none (so 7 and "7" are one value, "" and no tag one)."""
    dialect = connection.dialect.name
    if by == "hour":
        return m.hour(dialect, "ledger")
    if by == "day":
        return f"({m.day(dialect, 'ledger')} || 'T00:00:00')"
    try:
        text = m.group(dialect, "ledger", by)
    except ValueError as exc:
        raise InvalidRequest(f"cannot group by {by!r}", param="by") from exc
    return text if by in m.COLUMNS or by == "error" else f"NULLIF(CAST({text} AS TEXT), '')"


def row_group(connection: sa.Connection, by: str) -> sa.ColumnElement[Any]:
    return sa.literal_column(_text(connection, by))


def bucket_text(moment: datetime, grain: str) -> str:
    """A whole hour's or day's start as the rollups hold it (`2026-11-02T13:00:00`, `2026-11-02`). The year has
    its 4 digits however small (strftime's %Y writes year 999 as `999`, which sorts after `2026`)."""
    iso = moment.astimezone(UTC).isoformat()
    return f"{iso[:13]}:00:00" if grain == "hour" else iso[:10]


def _time(table: Any, column: str, part: Part, grain: str) -> list[sa.ColumnElement[bool]]:
    clauses = []
    if part.since is not None:
        clauses.append(table.c[column] >= bucket_text(part.since, grain))
    if part.until is not None:
        clauses.append(table.c[column] < bucket_text(part.until, grain))
    return clauses


def _from_rows(
    connection: sa.Connection, window: Window, by: str | None, kinds: tuple[str, ...], match: Match | None
) -> Any:
    dialect = connection.dialect.name
    key = row_group(connection, by) if by else sa.null()
    sums: list[Any] = [sa.literal_column(f"SUM({m.measure(n, dialect, 'ledger')})").label(n) for n in m.MEASURES]
    clauses = window.where(kinds=kinds)
    if match is not None:
        clauses.append(_is(row_group(connection, match[0]), match[1]))
    query = sa.select(key.label("key"), *sums).select_from(ledger).where(*clauses)
    return query.group_by(key) if by else query


def _hourly_key(by: str | None) -> sa.ColumnElement[Any]:
    hour = ledger_hourly.c.hour
    if by is None:
        return sa.null()
    if by == "hour":
        return hour
    if by == "day":
        return sa.func.substr(hour, 1, 10, type_=sa.String) + "T00:00:00"
    return sa.func.nullif(ledger_hourly.c[by], "")


def _from_hourly(window: Window, part: Part, by: str | None, kinds: tuple[str, ...], match: Match | None) -> Any:
    key = _hourly_key(by)
    clauses = [ledger_hourly.c.kind.in_(kinds), *_time(ledger_hourly, "hour", part, "hour")]
    if window.team is not None:
        clauses.append(ledger_hourly.c.team == window.team)
    if match is not None:
        clauses.append(_is(ledger_hourly.c[match[0]], match[1]))
    sums = [sa.func.sum(ledger_hourly.c[n]).label(n) for n in m.MEASURES]
    query = sa.select(key.label("key"), *sums).where(*clauses)
    return query.group_by(key) if by else query


def _core_dim(by: str | None, match: Match | None) -> str | None:
    """The ledger_daily dimension that answers an hourly grouping/filter (None: none does)."""
    wanted = {d for d in (by, match[0] if match else None) if d is not None and d not in ("team", "day")}
    if len(wanted) > 1 or (by is not None and by == "hour") or not wanted <= set(m.DAILY_CORE):
        return None
    return next(iter(wanted), "")


def _from_daily(window: Window, part: Part, by: str | None, kinds: tuple[str, ...], match: Match | None) -> Any:
    t = ledger_daily
    core = _core_dim(by, match) if (by is None or by in (*HOURLY_DIMS, "day")) and (
        match is None or match[0] in HOURLY_DIMS) else None  # fmt: skip
    dim = core if core is not None else by or (match[0] if match else "")
    key: sa.ColumnElement[Any]
    if by == "team":
        key = sa.func.nullif(t.c.team, "")
    elif by == "day":
        key = t.c.day + "T00:00:00"
    else:
        key = sa.func.nullif(t.c.value, "") if by else sa.null()
    clauses = [t.c.dim == dim, t.c.kind.in_(kinds), *_time(t, "day", part, "day")]
    if window.team is not None:
        clauses.append(t.c.team == window.team)
    elif dim not in (*m.DAILY_CORE, *m.DAILY_DIMS):  # a tag key: kept per team and across them (EVERY_TEAM)
        clauses.append(t.c.team != m.EVERY_TEAM if by == "team" else t.c.team == m.EVERY_TEAM)
    if match is not None:
        clauses.append(_is(t.c.team if match[0] == "team" else t.c.value, match[1]))
    sums = [sa.func.sum(t.c[n]).label(n) for n in m.MEASURES]
    query = sa.select(key.label("key"), *sums).where(*clauses)
    return query.group_by(key) if by else query


def _key_as_match(window: Window, by: str | None, match: Match | None) -> tuple[Window, Match | None]:
    """A key's own window (`key_id`), its totals or grouped by key: the daily rollup's `key` dimension answers
    it as a filter, as it does a key budget's scope (whole days from there, partial days from the key's rows).
    Groupings by anything else need key × that dimension, which no rollup holds: the key's rows."""
    if window.key_id is None or match is not None or by not in (None, "key"):
        return window, match
    return replace(window, key_id=None), ("key", window.key_id)


def part_queries(
    connection: sa.Connection,
    window: Window,
    by: str | None = None,
    kinds: tuple[str, ...] = m.KINDS,
    match: Match | None = None,
) -> list[sa.Select[Any]]:
    """One query per part of the window's plan, each selecting `key` and every measure's sum per group; a
    group's sums are the sums over the parts (`grouped` adds them in Python, margin.ledger.read.top in SQL)."""
    window, match = _key_as_match(window, by, match)
    grain = grain_for(window, [by, match[0] if match else None], tag_keys(connection))
    parts = plan(window, grain)
    if grain == "hour" and _core_dim(by, match) is not None and (match is None or match[0] in HOURLY_DIMS):
        parts = plan_days_then_hours(window)
    queries = []
    for part in parts:
        if part.source == "rows":
            queries.append(_from_rows(connection, window.between(part.since, part.until), by, kinds, match))
        elif part.source == "hour":
            queries.append(_from_hourly(window, part, by, kinds, match))
        else:
            queries.append(_from_daily(window, part, by, kinds, match))
    return queries


def grouped(
    connection: sa.Connection,
    window: Window,
    by: str | None = None,
    kinds: tuple[str, ...] = m.KINDS,
    match: Match | None = None,
) -> dict[Any, Sums]:
    """Sums per value of `by` (a hourly dimension, hour, day, key, endpoint, status, error, user or a tag key;
    None: one group, the window's totals). Groups with no rows are absent."""
    found: dict[Any, Sums] = {}
    for query in part_queries(connection, window, by, kinds, match):
        for row in connection.execute(query):
            if row.requests:
                add(found.setdefault(row.key, zero()), row._mapping)
    return found


def totals(
    connection: sa.Connection, window: Window, kinds: tuple[str, ...] = m.KINDS, match: Match | None = None
) -> Sums:
    return grouped(connection, window, None, kinds, match).get(None) or zero()


def first_at(connection: sa.Connection, window: Window, by: str | None = None) -> dict[Any, datetime]:
    """The first row's time per group (an open window's start), hourly dimensions or none."""
    grain = grain_for(window, [by], ())
    found: dict[Any, datetime] = {}
    for part in plan(window, grain if grain == "hour" else None):
        if part.source == "rows":
            sub = window.between(part.since, part.until)
            key = row_group(connection, by) if by else sa.null()
            query = sa.select(key.label("key"), sa.func.min(ledger.c.created_at).label("first")).where(*sub.where())
        else:
            key = _hourly_key(by)
            clauses = [ledger_hourly.c.kind.in_(m.KINDS), *_time(ledger_hourly, "hour", part, "hour")]
            if window.team is not None:
                clauses.append(ledger_hourly.c.team == window.team)
            query = sa.select(key.label("key"), sa.func.min(ledger_hourly.c.first_at).label("first")).where(*clauses)
        for row in connection.execute(query.group_by(key) if by else query):
            if row.first is not None:
                moment = as_utc(row.first)
                found[row.key] = min(found.get(row.key, moment), moment)
    return found
