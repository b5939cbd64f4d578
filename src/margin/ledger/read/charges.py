"""Charges: priced rows per UTC day × several groupings at once (the FOCUS export's grain). Such a grain (key ×
team × model × … × customer) has about as many combinations as requests, so no rollup helps: it is one
pass over the window's rows, grouped and sorted in the database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from margin.ledger import measures as m
from margin.ledger.models import ledger
from margin.ledger.read.sums import row_group
from margin.ledger.read.window import Window


def charges(connection: sa.Connection, window: Window, dims: Sequence[str]) -> Sequence[Any]:
    """Rows of (day 'YYYY-MM-DD', *dims, requests, input_tokens, output_tokens, cost_nanousd, energy_uj,
    co2e_ng) for priced requests; energy and carbon are NULL where no row of the group has them."""
    day: sa.ColumnElement[Any] = sa.literal_column(m.day(connection.dialect.name, "ledger")).label("day")
    keys = [row_group(connection, name).label(name) for name in dims]
    query = (
        sa.select(
            day,
            *keys,
            sa.func.count().label("requests"),
            sa.func.sum(ledger.c.input_tokens).label("input_tokens"),
            sa.func.sum(ledger.c.output_tokens).label("output_tokens"),
            sa.func.sum(ledger.c.cost_nanousd).label("cost_nanousd"),
            sa.func.sum(ledger.c.energy_uj).label("energy_uj"),
            sa.func.sum(ledger.c.co2e_ng).label("co2e_ng"),
        )
        .where(*window.where(), ledger.c.cost_nanousd.is_not(None))
        .group_by(day, *keys)
        .order_by(day, *keys)
    )
    return connection.execute(query).all()


def unpriced(connection: sa.Connection, window: Window) -> int:
    """Requests of the window at an unknown price."""
    from margin.ledger.read.sums import totals

    return totals(connection, window)["unpriced"]
