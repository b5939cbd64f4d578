"""Distinct customers per feature (the attach rate's numerator) and active customers in a window. Distinct
counts do not add up across buckets, so the (feature, customer) pairs of every part are united in Python:
whole days from ledger_attach, edges (and an org's view) from rows. ledger_attach keeps, per month × team
(or every team) × feature × customer, the days the pair was seen as bits: a window's whole days are the
months it touches, each with the mask of its days in the window (at most features × customers pairs per
month and team)."""

from __future__ import annotations

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
    """The part's whole days [first, last) (an open end: the rollup's first or last month)."""
    first = part.since.astimezone(UTC).date() if part.since is not None else None
    last = part.until.astimezone(UTC).date() if part.until is not None else None
    if first is None or last is None:
        low, high = connection.execute(
            sa.select(sa.func.min(ledger_attach.c.month), sa.func.max(ledger_attach.c.month))
        ).one()
        if low is None:
            return None
        first = first or date.fromisoformat(f"{low}-01")
        last = last or (date.fromisoformat(f"{high}-01") + timedelta(days=31)).replace(day=1)
    return (first, last) if first < last else None


def month_masks(first: date, last: date) -> dict[str, int]:
    """Per month 'YYYY-MM' touched by the days [first, last): the bits of those days (bit d-1 = day d)."""
    masks: dict[str, int] = {}
    day = first
    while day < last:
        month = day.strftime("%Y-%m")
        if day.day == 1 and (day + timedelta(days=31)).replace(day=1) <= last:
            masks[month] = ALL_DAYS  # the whole month
            day = (day + timedelta(days=31)).replace(day=1)
            continue
        masks[month] = masks.get(month, 0) | 1 << (day.day - 1)
        day += timedelta(days=1)
    return masks


def _rolled_pairs(connection: sa.Connection, part: Part, team: str | None) -> set[tuple[Any, Any]]:
    bounds = _bounds(connection, part)
    if bounds is None:
        return set()
    t = ledger_attach
    masks = month_masks(*bounds)
    whole = [month for month, mask in masks.items() if mask == ALL_DAYS]
    wanted: list[sa.ColumnElement[bool]] = [t.c.month.in_(whole)] if whole else []
    wanted += [sa.and_(t.c.month == mo, t.c.days.op("&")(mask) != 0) for mo, mask in masks.items() if mask != ALL_DAYS]
    query = sa.select(sa.func.nullif(t.c.feature, ""), sa.func.nullif(t.c.customer, ""))
    query = query.where(t.c.team == (m.EVERY_TEAM if team is None else team), sa.or_(*wanted))
    return {(row[0], row[1]) for row in connection.execute(query.distinct())}


def _pairs(connection: sa.Connection, window: Window) -> set[tuple[Any, Any]]:
    grain: Grain | None = "day" if grain_for(window, [], ()) is not None else None
    found: set[tuple[Any, Any]] = set()
    for part in plan(window, grain):
        if part.source == "rows":
            sub = window.between(part.since, part.until)
            feature, customer = row_group(connection, "feature"), row_group(connection, "customer")
            query = sa.select(feature, customer).where(*sub.where()).group_by(feature, customer)
            found.update((row[0], row[1]) for row in connection.execute(query))
        else:
            found |= _rolled_pairs(connection, part, window.team)
    return found


def attach(connection: sa.Connection, window: Window) -> tuple[dict[Any, int], int]:
    """(distinct customers per feature, distinct customers in the window); NULL customers are not counted."""
    pairs = _pairs(connection, window)
    per_feature: dict[Any, set[Any]] = {}
    for feature, customer in pairs:
        into = per_feature.setdefault(feature, set())
        if customer is not None:
            into.add(customer)
    active = {customer for _, customer in pairs if customer is not None}
    return {feature: len(customers) for feature, customers in per_feature.items()}, len(active)
