"""The planner: a window is read as whole buckets from a rollup and only its partial edges from ledger rows.

    plan(Window(10:20, 15:00), "hour") -> [rows 10:20-11:00, hour 11:00-15:00]

`source(window, by, tag_keys)` says which grain answers a grouping: the hourly rollup for its dimensions and
for time buckets, the daily rollup for the key, endpoint, status, error and rolled-up tag keys; anything
else (`user`, tag keys not rolled up, `Window(rollup=False)`) reads rows only. A single key's window
(`key_id`) reads rows too, but for its totals and its grouping by key, which margin.ledger.read.sums turns
into a filter on the daily rollup's `key` dimension (as a key budget's scope) before planning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from margin.ledger.measures import DAILY_DIMS, HOURLY_DIMS
from margin.ledger.read.window import Window

Grain = Literal["hour", "day"]
Source = Literal["rows", "hour", "day"]
_STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


@dataclass(frozen=True, slots=True)
class Part:
    source: Source
    since: datetime | None
    until: datetime | None


def floor(moment: datetime, grain: Grain) -> datetime:
    moment = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if grain == "day" else moment


def ceil(moment: datetime, grain: Grain) -> datetime:
    down = floor(moment, grain)
    return down if down == moment else down + _STEP[grain]


def plan(window: Window, grain: Grain | None) -> list[Part]:
    """Parts that cover the window exactly once."""
    if grain is None:
        return [Part("rows", window.since, window.until)]
    low = ceil(window.since, grain) if window.since is not None else None
    high = floor(window.until, grain) if window.until is not None else None
    if low is not None and high is not None and low >= high:
        return [Part("rows", window.since, window.until)]
    parts = []
    if window.since is not None and low is not None and low > window.since:
        parts.append(Part("rows", window.since, low))
    parts.append(Part(grain, low, high))
    if window.until is not None and high is not None and high < window.until:
        parts.append(Part("rows", high, window.until))
    return parts


def plan_days_then_hours(window: Window) -> list[Part]:
    """Whole days from the daily rollup; the partial days' whole hours from the hourly one; rows for the rest."""
    low = ceil(window.since, "day") if window.since is not None else None
    high = floor(window.until, "day") if window.until is not None else None
    if low is not None and high is not None and low >= high:
        return plan(window, "hour")
    parts = []
    if window.since is not None and low is not None and low > window.since:
        parts += plan(Window(window.since, low), "hour")
    parts.append(Part("day", low, high))
    if window.until is not None and high is not None and high < window.until:
        parts += plan(Window(high, window.until), "hour")
    return parts


def grain_for(window: Window, dims: Sequence[str | None], tag_keys: Sequence[str]) -> Grain | None:
    """The rollup grain that can answer groupings/filters on all of `dims` (None: rows only)."""
    if not window.rollup or window.key_id is not None or window.org is not None:
        return None
    wanted = {d for d in dims if d is not None}
    if wanted <= {*HOURLY_DIMS, "hour", "day"}:
        return "hour"
    if len(wanted) == 1 and wanted <= {*DAILY_DIMS, *tag_keys}:
        return "day"
    return None
