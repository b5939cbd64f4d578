"""Distinct customers per feature (the attach rate's numerator) and active customers in a window. Distinct
counts do not add up across buckets, so the (feature, customer) pairs of every part are united in Python:
whole days from ledger_attach (at most features × customers pairs), edges and team views from rows."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from margin.ledger.models import ledger_attach
from margin.ledger.read.plan import Grain, grain_for, plan
from margin.ledger.read.sums import _time, row_group
from margin.ledger.read.window import Window


def _pairs(connection: sa.Connection, window: Window) -> set[tuple[Any, Any]]:
    team_view = window.team is not None
    grain: Grain | None = "day" if not team_view and grain_for(window, [], ()) is not None else None
    found: set[tuple[Any, Any]] = set()
    for part in plan(window, grain):
        if part.source == "rows":
            sub = window.between(part.since, part.until)
            feature, customer = row_group(connection, "feature"), row_group(connection, "customer")
            query = sa.select(feature, customer).where(*sub.where()).group_by(feature, customer)
            found.update((row[0], row[1]) for row in connection.execute(query))
        else:
            t = ledger_attach
            query = sa.select(sa.func.nullif(t.c.feature, ""), sa.func.nullif(t.c.customer, ""))
            query = query.where(*_time(t, "day", part, "day")).distinct()
            found.update((row[0], row[1]) for row in connection.execute(query))
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
