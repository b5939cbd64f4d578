"""Savings of the levers the hourly rollup does not carry: the batch discount (rows with a `batch_id`) and
lowest-carbon / lowest-cost routes (rows with `route_pref`, against their default's counterfactual). Read
from the ledger rows of the window (both are rare next to all traffic and need no rollup to be exact)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from margin.economics.money import from_nanousd, usd_str
from margin.ledger.models import ledger


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


def _when(condition: sa.ColumnElement[bool], value: Any) -> sa.ColumnElement[Any]:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, value), else_=0)), 0)


def levers(connection: sa.Connection, where: Sequence[sa.ColumnElement[bool]]) -> Levers:
    c = ledger.c
    batch, pref = c.batch_id.is_not(None), c.route_pref.is_not(None)
    carbon_known = sa.and_(pref, c.default_co2e_g.is_not(None), c.co2e_g.is_not(None))
    cost_known = sa.and_(pref, c.default_cost_nanousd.is_not(None), c.cost_nanousd.is_not(None))
    query = sa.select(
        _when(batch, 1),
        _when(batch, sa.func.coalesce(c.cost_nanousd, 0)),
        _when(batch, sa.func.coalesce(c.discount_nanousd, 0)),
        _when(pref, 1),
        _when(sa.and_(pref, c.model != c.route_default), 1),
        _when(carbon_known, c.default_co2e_g - c.co2e_g),
        _when(cost_known, c.default_cost_nanousd - c.cost_nanousd),
        _when(sa.and_(pref, sa.not_(sa.and_(carbon_known, cost_known))), 1),
    ).where(*where, sa.or_(batch, pref))
    row = connection.execute(query).one()
    return Levers(
        int(row[0]),
        from_nanousd(int(row[1])),
        from_nanousd(int(row[2])),
        int(row[3]),
        int(row[4]),
        float(row[5]),
        from_nanousd(int(row[6])),
        int(row[7]),
    )
