"""Charges: priced requests per UTC day × several groupings at once (the FOCUS export's grain). The default
grain, day × key × team × model × backend × region × service tier (the processing tier a request was charged
at: a model's flex, priority and standard requests of a day are three charges, each at its own price), is kept
per batch in ledger_charges: whole days come from it, partial edges from rows. Adding tag keys (feature,
customer) makes a grain with about as many combinations as requests when tags vary per request: no rollup
helps there, it is one pass over the rows."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from margin.ledger import measures as m
from margin.ledger.models import ledger, ledger_charges
from margin.ledger.read.plan import Part, grain_for, plan
from margin.ledger.read.sums import _time, row_group, totals
from margin.ledger.read.window import Window

CHARGE_GRAIN = ("key", "team", "model", "backend", "region", "service_tier")  # ledger_charges' (rollup_sql)
SUMS = ("requests", "input_tokens", "output_tokens", "cost_nanousd", "energy_uj", "co2e_ng", "discount_nanousd")


def charges(connection: sa.Connection, window: Window, dims: Sequence[str] = CHARGE_GRAIN) -> list[Any]:
    """Rows of (day 'YYYY-MM-DD', *dims, requests, input_tokens, output_tokens, cost_nanousd, energy_uj,
    co2e_ng, discount_nanousd) for priced requests, sorted; energy and carbon are NULL where no row of the group
    has them, the discount (batch lines': cost + discount is the cost at list price) where none had one."""
    rolled = tuple(dims) == CHARGE_GRAIN and window.team is None and grain_for(window, [], ()) is not None
    found: dict[tuple[Any, ...], list[Any]] = {}
    for part in plan(window, "day" if rolled else None):
        rows = _rolled(connection, part) if part.source == "day" else _rows(connection, window, part, dims)
        for row in rows:
            key, sums = tuple(row[: len(dims) + 1]), list(row[len(dims) + 1 :])
            into = found.get(key)
            found[key] = sums if into is None else [_plus(a, b) for a, b in zip(into, sums, strict=True)]
        if part.source == "day":  # the rollup keeps no discount: its batch lines' are read from their rows
            for row in _rows(connection, window, part, dims, discounts=True):
                if (into := found.get(tuple(row[: len(dims) + 1]))) is not None:
                    into[-1] = _plus(into[-1], row[-1])
    record = namedtuple("Charge", ["day", *dims, *SUMS])  # type: ignore[misc]
    return [record(*key, *sums) for key, sums in sorted(found.items(), key=lambda kv: tuple(map(str, kv[0])))]


def stream_charges(
    connection: sa.Connection, window: Window, dims: Sequence[str] = CHARGE_GRAIN, batch: int = 10_000
) -> Iterator[Any]:
    """`charges`, the same records in the same order, without holding them all where they are read from rows
    alone (`--tags`, or no rollup: about a charge per request when tags vary per request): the grouped query
    sorted by the database as `charges` sorts (each key as its text, NULL as 'None', by code point) and fetched
    `batch` at a time. A window with a rollup part is `charges` itself (its size is the rollup's, not the rows')."""
    rolled = tuple(dims) == CHARGE_GRAIN and window.team is None and grain_for(window, [], ()) is not None
    parts = plan(window, "day" if rolled else None)
    if len(parts) != 1 or parts[0].source != "rows":
        yield from charges(connection, window, dims)
        return
    record = namedtuple("Charge", ["day", *dims, *SUMS])  # type: ignore[misc]
    result = connection.execution_options(yield_per=batch).execute(_rows_query(connection, window, parts[0], dims))
    for row in result:
        yield record(*row)


def _plus(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else a + b


def _rolled(connection: sa.Connection, part: Part) -> list[Any]:
    c = ledger_charges.c
    energy = sa.case((sa.func.sum(c.energy_n) > 0, sa.func.sum(c.energy_uj)), else_=None)
    co2e = sa.case((sa.func.sum(c.co2e_n) > 0, sa.func.sum(c.co2e_ng)), else_=None)
    keys = [c.day, *(sa.func.nullif(c[name], "") for name in CHARGE_GRAIN)]
    sums = [sa.func.sum(c[name]) for name in SUMS[:4]]
    query = sa.select(*keys, *sums, energy, co2e, sa.null()).where(*_time(ledger_charges, "day", part, "day"))
    return list(connection.execute(query.group_by(*keys)))


def _rows(
    connection: sa.Connection, window: Window, part: Part, dims: Sequence[str], discounts: bool = False
) -> list[Any]:
    """The charges of a part of the window from the ledger rows; `discounts`: only its batch lines' discounts
    (every other sum NULL), found through the ledger's batch_id index, for a part the rollup answered."""
    return list(connection.execute(_rows_query(connection, window, part, dims, discounts)))


def _rows_query(
    connection: sa.Connection, window: Window, part: Part, dims: Sequence[str], discounts: bool = False
) -> sa.Select[Any]:
    """`_rows`' query, ordered as `charges` sorts its records (for `stream_charges`)."""
    day: sa.ColumnElement[Any] = sa.literal_column(m.day(connection.dialect.name, "ledger")).label("day")
    keys = [row_group(connection, name).label(name) for name in dims]
    measures = (ledger.c.input_tokens, ledger.c.output_tokens, ledger.c.cost_nanousd, ledger.c.energy_uj)
    sums: list[sa.ColumnElement[Any]] = [sa.func.count(), *map(sa.func.sum, (*measures, ledger.c.co2e_ng))]
    clauses = [*window.between(part.since, part.until).where(), ledger.c.cost_nanousd.is_not(None)]
    if discounts:
        sums, clauses = [sa.null()] * len(sums), [*clauses, ledger.c.batch_id.is_not(None)]
    query = sa.select(day, *keys, *sums, sa.func.sum(ledger.c.discount_nanousd)).where(*clauses)
    binary = "C" if connection.dialect.name == "postgresql" else "BINARY"  # code point order, as Python's str
    # `charges` sorts by str(key): NULL as 'None'; keys equal as text (NULL and 'None') stay as grouped, NULL first
    texts = [sa.collate(sa.func.coalesce(k, "None"), binary) for k in (day, *keys)]
    order: list[sa.ColumnElement[Any]] = [*texts, *(k.is_not(None) for k in keys)]
    return query.group_by(day, *keys).order_by(*order)


def unpriced(connection: sa.Connection, window: Window) -> int:
    """Requests of the window at an unknown price."""
    return totals(connection, window)["unpriced"]
