"""Distinct customers per feature (the attach rate's numerator) and active customers in a window. Distinct
counts do not add up across buckets, so the (feature, customer) pairs of every part are united in Python:
whole days from ledger_attach, edges (and an org's view) from rows. ledger_attach keeps, per month × team
(or every team) × feature × customer, the days the pair was seen as bits: a window's whole days are the
months it touches, each with the mask of its days in the window (at most features × customers pairs per
month and team)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, date, timedelta
from typing import Any

import sqlalchemy as sa

from margin.ledger import measures as m
from margin.ledger.models import ledger_attach
from margin.ledger.read.plan import Grain, Part, grain_for, plan
from margin.ledger.read.sums import row_group
from margin.ledger.read.window import Window

ALL_DAYS = (1 << 31) - 1


def _bounds(connection: sa.Connection, part: Part) -> tuple[date, date] | None:
    """The part's whole days [first, last), within the months the rollup has (an open end: its first or last
    month; a window of centuries, `--since 1900-01-01`, walked and queried every month of them: past 500 of
    them SQLite refused the statement, and an end in December 9999 overflowed the date of the month after)."""
    low, high = connection.execute(
        sa.select(sa.func.min(ledger_attach.c.month), sa.func.max(ledger_attach.c.month))
    ).one()
    if low is None:
        return None
    earliest, latest = date.fromisoformat(f"{low}-01"), _next_month(date.fromisoformat(f"{high}-01"))
    first = part.since.astimezone(UTC).date() if part.since is not None else earliest
    last = part.until.astimezone(UTC).date() if part.until is not None else latest
    first, last = max(first, earliest), min(last, latest)
    return (first, last) if first < last else None


def _next_month(day: date) -> date:
    """The first day of the month after `day`'s; after December 9999, the last date there is (no later one)."""
    if (day.year, day.month) == (9999, 12):
        return date.max
    return (day.replace(day=1) + timedelta(days=32)).replace(day=1)


def month_masks(first: date, last: date) -> dict[str, int]:
    """Per month 'YYYY-MM' touched by the days [first, last): the bits of those days (bit d-1 = day d)."""
    masks: dict[str, int] = {}
    day = first
    while day < last:
        month = f"{day.year:04d}-{day.month:02d}"  # strftime writes year 999 as 999
        if day.day == 1 and _next_month(day) <= last:
            masks[month] = ALL_DAYS  # the whole month
            day = _next_month(day)
            continue
        masks[month] = masks.get(month, 0) | 1 << (day.day - 1)
        day += timedelta(days=1)
    return masks


def _rolled_pairs(connection: sa.Connection, part: Part, team: str | None) -> list[sa.Select[Any]]:
    """The pairs seen on the part's whole days: primary-key ranges (month, team), the whole months in one
    select (`month IN (…)`), each partial month (at most two) in one of its own."""
    bounds = _bounds(connection, part)
    if bounds is None:
        return []
    t = ledger_attach
    pairs = sa.select(
        sa.func.nullif(t.c.feature, "").label("feature"), sa.func.nullif(t.c.customer, "").label("customer")
    ).where(t.c.team == (m.EVERY_TEAM if team is None else team))
    masks = month_masks(*bounds)
    whole = [month for month, mask in masks.items() if mask == ALL_DAYS]
    out = [pairs.where(t.c.month.in_(whole))] if whole else []
    for month, mask in masks.items():
        if mask != ALL_DAYS:
            out.append(pairs.where(t.c.month == month, t.c.days.op("&")(mask) != 0))
    return out


def _pairs(connection: sa.Connection, window: Window) -> list[sa.Select[Any]]:
    """Selects of the (feature, customer) pairs of each part of the window (their UNION: the window's)."""
    grain: Grain | None = "day" if grain_for(window, [], ()) is not None else None
    out: list[sa.Select[Any]] = []
    for part in plan(window, grain):
        if part.source == "rows":
            sub = window.between(part.since, part.until)
            feature, customer = row_group(connection, "feature"), row_group(connection, "customer")
            out.append(sa.select(feature.label("feature"), customer.label("customer")).where(*sub.where()))
        else:
            out += _rolled_pairs(connection, part, window.team)
    return out


def attach(
    connection: sa.Connection, window: Window, features: Collection[str | None] | None = None
) -> tuple[dict[Any, int], int]:
    """(distinct customers per feature, distinct customers in the window); NULL customers are not counted.
    One statement over the UNION of the parts' pairs (a common table, evaluated once): a few rows come back,
    not every pair. `features`: count those features' customers only (None: every feature's, a row each)."""
    selects = _pairs(connection, window)
    if not selects:
        return {}, 0
    pairs = (sa.union(*selects) if len(selects) > 1 else selects[0].distinct()).cte("pairs")
    per_feature = sa.select(sa.literal(0), pairs.c.feature, sa.func.count(pairs.c.customer)).group_by(pairs.c.feature)
    if features is not None:
        named = [name for name in features if name is not None]
        among = [pairs.c.feature.in_(named)] + ([pairs.c.feature.is_(None)] if None in features else [])
        per_feature = per_feature.where(sa.or_(sa.false(), *among))
    active = sa.select(sa.literal(1), sa.null(), sa.func.count(sa.distinct(pairs.c.customer)))
    found: dict[Any, int] = {}
    customers = 0
    for which, feature, count in connection.execute(sa.union_all(per_feature, active)):
        if which:
            customers = int(count)
        else:
            found[feature] = int(count)
    return found, customers
