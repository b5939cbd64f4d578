"""Latency percentiles: one definition, nearest rank (the ⌈q/100 × n⌉-th smallest value, as
`nearest_rank`), read two ways:

- `exact(...)`: the true value at that rank among the window's rows. The histogram says which bin holds the
  rank, then the window's values in that bin, read from an index keyed by (bin, time), are sorted to pick it
  (a bin holds a few % of the rows, so this stays fast on a month of a million rows). `margin report`
  totals use it; a key's own window (`/v1/margin/usage`) reads its histogram from ledger_latency's `key`
  dimension and only that bin's rows of the key.
- `from_histogram(...)`: the bin that holds the rank, reported as the bin's geometric middle: within
  measures.RELATIVE_ERROR (4.43 %) of the exact value. Groups in `margin report` and the dashboard's latency
  page use it; histograms come from ledger_latency for whole days and from rows for the edges.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from margin.ledger import measures as m
from margin.ledger.models import ledger, ledger_latency
from margin.ledger.read.plan import Grain, Part, grain_for, plan
from margin.ledger.read.sums import _time, row_group, tag_keys
from margin.ledger.read.window import Window

Histogram = dict[int, int]  # bin -> rows


def nearest_rank(n: int, q: float) -> int:
    """The 1-based rank of the q-th percentile among n sorted values."""
    return max(1, min(n, round(q / 100 * n + 0.5)))


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values (the definition the SQL paths implement)."""
    return values[nearest_rank(len(values), q) - 1] if values else None


def _locate(histogram: Histogram, rank: int) -> tuple[int, int]:
    """The bin holding the rank-th value and the value's rank inside that bin."""
    below = 0
    for bin_ in sorted(histogram):
        if below + histogram[bin_] >= rank:
            return bin_, rank - below
        below += histogram[bin_]
    raise ValueError("rank beyond the histogram")


def from_histogram(histogram: Histogram, q: float) -> float | None:
    n = sum(histogram.values())
    if not n:
        return None
    return m.representative(_locate(histogram, nearest_rank(n, q))[0])


def _dimension(by: str | None) -> str:
    return "" if by in (None, "team") else by


def _histogram_grain(window: Window, by: str | None, keys: Iterable[str]) -> bool:
    dim = _dimension(by)
    if dim not in (*m.HISTOGRAM_DIMS, *keys):
        return False
    if window.team is not None and dim not in m.TEAM_HISTOGRAMS:
        return False  # across teams only
    return grain_for(window, [], ()) is not None


def _own_key(window: Window, by: str | None) -> str | None:
    """The key whose own window (its totals, or grouped by key) ledger_latency's `key` histograms answer (they
    are across teams: not for a window narrowed to a team or an org); None: not such a window."""
    if window.key_id is None or by not in (None, "key") or window.team is not None or window.org is not None:
        return None
    return window.key_id if window.rollup else None


@dataclass(frozen=True, slots=True)
class Among:
    """Only some groups of a grouping: those in `keys` (a None in it is the NULL group), or with `rest` every
    other group, added up into one histogram (key None): a capped breakdown's listed groups and `others`."""

    keys: tuple[Any, ...]
    rest: bool = False

    def clause(self, key: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        named = [k for k in self.keys if k is not None]
        if len(named) < len(self.keys):  # the NULL group is among them
            return sa.and_(key.is_not(None), key.not_in(named)) if self.rest else sa.or_(key.in_(named), key.is_(None))
        return sa.or_(key.is_(None), key.not_in(named)) if self.rest else key.in_(named)


def _grouped(key: sa.ColumnElement[Any], bin_: Any, n: Any, by: str | None, among: Among | None, *where: Any) -> Any:
    """SELECT key, bin, n … GROUP BY key, bin (bin alone with no `by`, or for the rest of the groups)."""
    clauses = [*where, among.clause(key)] if among is not None and by else list(where)
    if by is None or (among is not None and among.rest):
        return sa.select(sa.null().label("key"), bin_.label("bin"), n.label("n")).where(*clauses).group_by(bin_)
    return sa.select(key.label("key"), bin_.label("bin"), n.label("n")).where(*clauses).group_by(key, bin_)


def _from_rollup(
    window: Window, part: Part, by: str | None, metric: str, key_id: str | None, among: Among | None
) -> Any:
    t = ledger_latency
    dim = "key" if key_id is not None else _dimension(by)
    if by == "team":
        key: sa.ColumnElement[Any] = sa.func.nullif(t.c.team, "")
    else:
        key = sa.func.nullif(t.c.value, "") if by else sa.null()
    clauses = [t.c.dim == dim, t.c.metric == metric, *_time(t, "day", part, "day")]
    if key_id is not None:
        clauses.append(t.c.value == key_id)
    if dim not in m.TEAM_HISTOGRAMS:
        clauses.append(t.c.team == m.EVERY_TEAM)
    elif window.team is not None:
        clauses.append(t.c.team == window.team)
    return _grouped(key, t.c.bin, sa.func.sum(t.c.n), by, among, *clauses)


def _from_rows(connection: sa.Connection, window: Window, by: str | None, metric: str, among: Among | None) -> Any:
    column = ledger.c[m.METRICS[metric]]
    key = row_group(connection, by) if by else sa.null()
    bin_: sa.ColumnElement[Any] = sa.literal_column(m.latency_bin(f"ledger.{column.name}"))
    return _grouped(key, bin_, sa.func.count(), by, among, *window.where(), column.is_not(None))


def histograms(
    connection: sa.Connection, window: Window, by: str | None, metric: str, among: Among | None = None
) -> dict[Any, Histogram]:
    """Latency histogram (metric e2e or ttft) per value of `by` (None: the window's), only of the groups
    `among` names when given (or, with its `rest`, of the other groups, as one histogram under None)."""
    own = _own_key(window, by)
    grain: Grain | None = "day" if own is not None or _histogram_grain(window, by, tag_keys(connection)) else None
    found: dict[Any, Histogram] = {}
    for part in plan(window, grain):
        if part.source == "rows":
            query = _from_rows(connection, window.between(part.since, part.until), by, metric, among)
        else:
            query = _from_rollup(window, part, by, metric, own, among)
        for row in connection.execute(query):
            into = found.setdefault(row.key, {})
            into[int(row.bin)] = into.get(int(row.bin), 0) + int(row.n)
    return found


def _walk(connection: sa.Connection, window: Window, metric: str, bin_: int, offset: int) -> float | None:
    """The offset-th smallest value (0-based) of the window's rows in one bin: the index keyed by (bin, time)
    holds them together, with their values and kinds (ix_ledger_<metric>_bin); they are sorted here."""
    column = ledger.c[m.METRICS[metric]]
    in_bin = sa.literal_column(m.latency_bin(f"ledger.{column.name}")) == bin_
    query = sa.select(column).where(in_bin, *window.where()).order_by(column).offset(offset).limit(1)
    if connection.dialect.name == "sqlite" and window.key_id is None:
        # SQLAlchemy has no INDEXED BY; the values bound are datetimes, numbers and a team name (escaped)
        sql = str(query.compile(connection, compile_kwargs={"literal_binds": True}))
        index = f"ix_ledger_{metric}_bin"
        value = connection.exec_driver_sql(sql.replace("FROM ledger", f"FROM ledger INDEXED BY {index}", 1)).scalar()
    else:
        value = connection.execute(query).scalar()
    return None if value is None else float(value)


def exact(connection: sa.Connection, window: Window, metric: str, qs: Iterable[float]) -> dict[float, float | None]:
    """Exact nearest-rank percentiles of the window's rows."""
    histogram = histograms(connection, window, None, metric).get(None, {})
    n = sum(histogram.values())
    out: dict[float, float | None] = {}
    for q in qs:
        if not n:
            out[q] = None
            continue
        bin_, inside = _locate(histogram, nearest_rank(n, q))
        out[q] = _walk(connection, window, metric, bin_, inside - 1)
    return out
