"""The first `limit` groups of a grouping, ranked in SQL: by cost, then requests, then the key as text (a
NULL key as `None`, where Python's `str` puts it), so a read with a cap holds `limit` groups in memory, not
one per group (a grouping by user can have one per request).

    top(conn, window, by, limit) -> ([(key, Sums)…], groups, rest)   the listed groups, how many there
                                                                     were, the sums of the others

The window's parts (margin.ledger.read.sums.part_queries: rollups and partial edges' rows) are added up per
group by one UNION ALL; `COUNT(*) OVER ()` counts the groups and `SUM(SUM(x)) OVER ()` adds up every
group's sums before the LIMIT, in the same statement (one snapshot: the rest is every group less the listed
ones, never a count from another moment). The key is compared byte by byte (SQLite's BINARY, PostgreSQL's "C"
collation): for UTF-8 text that is Python's code point order.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from margin.ledger import measures as m
from margin.ledger.read.sums import Sums, add, minus, part_queries, total, zero
from margin.ledger.read.window import Window


def top(
    connection: sa.Connection, window: Window, by: str, limit: int | None, kinds: tuple[str, ...] = m.KINDS
) -> tuple[list[tuple[Any, Sums]], int, Sums]:
    """The first `limit` groups by cost, then requests, then key (None: every group), how many groups the
    window has, and the sums of the groups left out (every group's sums less the listed groups')."""
    queries = part_queries(connection, window, by, kinds)
    parts = (queries[0] if len(queries) == 1 else sa.union_all(*queries)).subquery("parts")
    sums = {name: sa.func.sum(parts.c[name]) for name in m.MEASURES}
    text: sa.ColumnElement[Any] = sa.func.coalesce(sa.cast(parts.c.key, sa.Text), "None")
    if connection.dialect.name == "postgresql":
        text = text.collate("C")
    everything = [sa.func.sum(s).over().label(f"all_{n}") for n, s in sums.items()]  # after GROUP BY, pre-LIMIT
    query = (
        sa.select(parts.c.key, *(s.label(n) for n, s in sums.items()), *everything, sa.func.count().over().label("n"))
        .group_by(parts.c.key)
        .having(sums["requests"] > 0)
        .order_by(sums["cost_nanousd"].desc(), sums["requests"].desc(), text)
        .limit(limit)
    )
    listed, groups, whole = [], 0, zero()
    for row in connection.execute(query):
        listed.append((row.key, add(zero(), row._mapping)))
        groups, whole = int(row.n), {n: int(row._mapping[f"all_{n}"]) for n in m.MEASURES}
    return listed, groups, minus(whole, total(s for _, s in listed))
