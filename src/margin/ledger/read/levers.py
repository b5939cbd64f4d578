"""Savings of the levers the other sums do not carry: the batch discount (rows with a `batch_id`) and
lowest-carbon / lowest-cost routes (rows with `route_pref`, against their default's counterfactual).

Window totals (never grouped): whole hours from ledger_hourly's lever sums (margin.ledger.measures.LEVERS,
kept per ingested batch), the partial edges, one key's or one org's view and `Window(rollup=False)` from
ledger rows with the same SQL, so both paths give the same integers. Saved carbon is summed in nanograms (the
default's emissions rounded to ng, minus the row's `co2e_ng`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from margin.economics.money import from_nanousd, usd_str
from margin.ledger import measures as m
from margin.ledger.models import ledger, ledger_hourly
from margin.ledger.read.plan import Part, grain_for, plan
from margin.ledger.read.sums import _time
from margin.ledger.read.window import Window


@dataclass(frozen=True, slots=True)
class Levers:
    batch_requests: int  # ledger rows of batch lines
    batch_cost_usd: Decimal  # what they were charged (after the discount)
    batch_discount_usd: Decimal  # what the discount took off
    preferred_requests: int  # requests of lowest-carbon / lowest-cost routes
    preferred_moved: int  # of which served by another model than the route's default
    preferred_saved_co2e_g: float  # Σ (default's gCO2e − actual) where both are known
    preferred_saved_usd: Decimal  # Σ (default's cost − actual) where both are known (negative: it cost more)
    preferred_unknown: int  # rows whose counterfactual or actual is unknown (left out of the sums)

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_requests": self.batch_requests,
            "batch_cost_usd": usd_str(self.batch_cost_usd),
            "batch_discount_usd": usd_str(self.batch_discount_usd),
            "preferred_requests": self.preferred_requests,
            "preferred_moved": self.preferred_moved,
            "preferred_saved_co2e_g": round(self.preferred_saved_co2e_g, 9),
            "preferred_saved_usd": usd_str(self.preferred_saved_usd),
            "preferred_unknown": self.preferred_unknown,
        }


NONE = Levers(0, Decimal(0), Decimal(0), 0, 0, 0.0, Decimal(0), 0)


def _from_rows(connection: sa.Connection, window: Window) -> Sequence[Any]:
    dialect = connection.dialect.name
    sums: list[sa.ColumnElement[Any]] = [
        sa.literal_column(f"SUM({m.lever(name, dialect, 'ledger')})") for name in m.LEVERS
    ]
    lever_rows = sa.or_(ledger.c.batch_id.is_not(None), ledger.c.route_pref.is_not(None))
    return tuple(connection.execute(sa.select(*sums).select_from(ledger).where(*window.where(), lever_rows)).one())


def _from_hourly(connection: sa.Connection, window: Window, part: Part) -> Sequence[Any]:
    t = ledger_hourly
    clauses = [t.c.kind.in_(m.KINDS), *_time(t, "hour", part, "hour")]
    if window.team is not None:
        clauses.append(t.c.team == window.team)
    sums: list[sa.ColumnElement[Any]] = [sa.func.sum(t.c[name]) for name in m.LEVERS]
    return tuple(connection.execute(sa.select(*sums).where(*clauses)).one())


def levers(connection: sa.Connection, window: Window) -> Levers:
    """The window's lever sums: whole hours from the rollup, the rest from rows."""
    found = [0] * len(m.LEVERS)
    for part in plan(window, grain_for(window, [], ())):
        if part.source == "rows":
            row = _from_rows(connection, window.between(part.since, part.until))
        else:
            row = _from_hourly(connection, window, part)
        found = [total + int(value or 0) for total, value in zip(found, row, strict=True)]
    sums = dict(zip(m.LEVERS, found, strict=True))
    return Levers(
        sums["batch_requests"],
        from_nanousd(sums["batch_cost_nanousd"]),
        from_nanousd(sums["batch_discount_nanousd"]),
        sums["pref_requests"],
        sums["pref_moved"],
        sums["pref_saved_co2e_ng"] / m.NANO,
        from_nanousd(sums["pref_saved_nanousd"]),
        sums["pref_unknown"],
    )
