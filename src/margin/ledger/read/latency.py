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


def _from_rollup(
    connection: sa.Connection, window: Window, part: Part, by: str | None, metric: str, key_id: str | None
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
    query = sa.select(key.label("key"), t.c.bin, sa.func.sum(t.c.n).label("n")).where(*clauses)
    return connection.execute(query.group_by(key, t.c.bin) if by else query.group_by(t.c.bin))


def _from_rows(connection: sa.Connection, window: Window, by: str | None, metric: str) -> Any:
    column = ledger.c[m.METRICS[metric]]
    key = row_group(connection, by) if by else sa.null()
    bin_: sa.ColumnElement[Any] = sa.literal_column(m.latency_bin(f"ledger.{column.name}"))
    query = sa.select(key.label("key"), bin_.label("bin"), sa.func.count().label("n"))
    query = query.where(*window.where(), column.is_not(None))
    return connection.execute(query.group_by(key, bin_) if by else query.group_by(bin_))


def histograms(connection: sa.Connection, window: Window, by: str | None, metric: str) -> dict[Any, Histogram]:
    """Latency histogram (metric e2e or ttft) per value of `by` (None: the window's)."""
    own = _own_key(window, by)
    grain: Grain | None = "day" if own is not None or _histogram_grain(window, by, tag_keys(connection)) else None
    found: dict[Any, Histogram] = {}
    for part in plan(window, grain):
        if part.source == "rows":
            rows = _from_rows(connection, window.between(part.since, part.until), by, metric)
        else:
            rows = _from_rollup(connection, window, part, by, metric, own)
        for row in rows:
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
