"""The report views behind `margin report --view …` (and the dashboard): one function builds a `View`
whose `to_json()` is what `--format json` prints and whose `columns`/`rows` are what `table` and `csv` show.

Public API (all take a sync engine and a `Window`):
    summarize(engine, window, by) -> dict                       report.queries (the default view)
    overview(engine, window, settings, bucket) -> Overview      everything on the dashboard's first page
    timeseries(engine, window, bucket) -> list[TimePoint]       report.metrics
    savings(engine, window) -> Savings                          report.metrics
    carbon(engine, window, by) -> list[CarbonRow]               report.metrics
    margins(engine, window, revenue, lines, by) -> MarginReport report.business
    tasks(engine, window, by) -> list[TaskStats]                report.business
    utilization(engine, window, settings) -> list[BackendUtilization]  report.utilization
    build(name, engine, window, settings, Options(by, bucket, revenue_lines)) -> View   any view by name

Window(since, until, key_id=None, rollup=True): whole-hour windows (or open ends) read sums from the hourly
rollup when the grouping is kind/team/model/backend/region; anything else reads the ledger rows (a key's
own window: its totals from the daily rollup's key dimension, its other groupings from its rows). Both give
the same numbers (energy/carbon float sums may differ in the last printed digit). For the dashboard to show
what `margin report --view overview --json` prints, call overview(...).to_json() with the same Window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from margin.config import Settings
from margin.errors import InvalidRequest
from margin.report.business import MarginReport, MarginRow, RevenueLine, TaskStats, margins, tasks
from margin.report.metrics import Bucket, CarbonRow, Savings, TimePoint, carbon, savings, timeseries
from margin.report.queries import Window, summarize
from margin.report.utilization import BackendUtilization, utilization

VIEWS = ("summary", "overview", "margin", "tasks", "savings", "utilization", "carbon", "timeseries")
METRIC_VIEWS = {
    "cost": "summary",
    "spend": "summary",
    "margin": "margin",
    "attach": "margin",
    "revenue": "margin",
    "task": "tasks",
    "tasks": "tasks",
    "cost_per_task": "tasks",
    "savings": "savings",
    "utilization": "utilization",
    "idle": "utilization",
    "carbon": "carbon",
    "energy": "carbon",
}


@dataclass(frozen=True, slots=True)
class Overview:
    summary: dict[str, Any]  # summarize(…, by=None)
    series: list[TimePoint]
    savings: Savings
    tasks: TaskStats | None  # None when left out (with_tasks=False)
    utilization: list[BackendUtilization]

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary,
            "series": [p.to_json() for p in self.series],
            "savings": self.savings.to_json(),
            "tasks": self.tasks.to_json() if self.tasks is not None else None,
            "utilization": [u.to_json() for u in self.utilization],
        }


def overview(
    engine: sa.Engine, window: Window, settings: Settings, bucket: Bucket = "day", with_tasks: bool = True
) -> Overview:
    """Totals, series, savings, tasks and utilization. Tasks read ledger rows (a join with feedback): on a
    month of 1M rows they are most of the time, so a page may ask for them apart (with_tasks=False + tasks())."""
    return Overview(
        summarize(engine, window),
        timeseries(engine, window, bucket),
        savings(engine, window),
        tasks(engine, window)[0] if with_tasks else None,
        utilization(engine, window, settings),
    )


@dataclass(frozen=True, slots=True)
class View:
    name: str
    data: dict[str, Any]  # the JSON form
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"view": self.name, **self.data}


@dataclass(frozen=True, slots=True)
class Options:
    by: str | None = None
    bucket: Bucket = "day"
    revenue_lines: Sequence[RevenueLine] = ()


def resolve(view: str | None, metric: str | None) -> str:
    if view is not None and view not in VIEWS:
        raise InvalidRequest(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}", param="view")
    if metric is not None and metric not in METRIC_VIEWS:
        raise InvalidRequest(f"unknown metric {metric!r}; choose one of {', '.join(METRIC_VIEWS)}", param="metric")
    if view and metric and METRIC_VIEWS[metric] != view:
        raise InvalidRequest(f"--metric {metric} belongs to the {METRIC_VIEWS[metric]} view, not {view}")
    return view or (METRIC_VIEWS[metric] if metric else "summary")


def _window_json(window: Window) -> dict[str, Any]:
    return {
        "since": window.since.isoformat() if window.since else None,
        "until": window.until.isoformat() if window.until else None,
    }


def _empty_row(name: str) -> Any:
    """A row of zeros of the view's type: its columns when the window has no requests (the header was `key`)."""
    zero = Decimal(0)
    if name == "margin":
        return MarginRow(None, 0, 0, 0, None, zero, 0, None, None, None)
    if name == "tasks":
        return TaskStats(None, 0, 0, 0, zero, zero, 0, None, None)
    if name == "carbon":
        return CarbonRow(None, 0, 0, 0.0, 0.0, 0, 0, 0, 0, 0)
    if name == "utilization":
        return BackendUtilization("", zero, 0, 0.0, 0.0, 0, zero, None)
    return TimePoint("", 0, 0, 0, zero, 0, None, 0.0, 0.0, zero)


def _keyed(items: Sequence[Any], name: str) -> tuple[list[str], list[list[Any]]]:
    dicts = [item.to_json() for item in items]
    header = dicts[0] if dicts else _empty_row(name).to_json()
    columns = [c for c in header if c not in ("assumption",)]
    return columns, [[d[c] for c in columns] for d in dicts]


UNGROUPED = (  # views with a grouping of their own
    ("overview", "per backend and per --bucket"),
    ("utilization", "per backend"),
    ("timeseries", "per --bucket"),
    ("savings", "per lever"),
)


def build(name: str, engine: sa.Engine, window: Window, settings: Settings, options: Options) -> View:
    """Run one view. Its JSON always carries the window; lists live under `groups`."""
    own = dict(UNGROUPED).get(name)
    if options.by is not None and own is not None:  # it was ignored without a word
        raise InvalidRequest(f"--by does not apply to the {name} view ({own})", param="by")
    head = _window_json(window)
    if name == "summary":
        data = summarize(engine, window, options.by)
        names = list(data["totals"])
        rows = [[g["key"], *(g[c] for c in names)] for g in data["groups"]]
        return View(name, data, ["key", *names], [*rows, ["total", *data["totals"].values()]])
    if name == "overview":
        series_columns = list(_empty_row("timeseries").to_json())  # the CSV header of an empty series
        return View(name, overview(engine, window, settings, options.bucket).to_json(), series_columns)
    if name == "margin":
        report: MarginReport = margins(engine, window, settings.revenue, options.revenue_lines, options.by or "feature")
        columns, rows = _keyed(report.rows, name)
        return View(name, {**head, **report.to_json()}, columns, rows)
    lists: dict[str, Any] = {
        "tasks": lambda: tasks(engine, window, options.by),
        "utilization": lambda: utilization(engine, window, settings),
        "carbon": lambda: carbon(engine, window, options.by or "region"),
        "timeseries": lambda: timeseries(engine, window, options.bucket),
    }
    if name in lists:
        items = lists[name]()
        columns, rows = _keyed(items, name)
        extra = {"assumption": items[0].to_json()["assumption"]} if name == "utilization" and items else {}
        return View(name, {**head, "by": options.by, **extra, "groups": [i.to_json() for i in items]}, columns, rows)
    if name == "savings":
        found = savings(engine, window).to_json()
        return View(name, {**head, **found}, ["lever", "value"], [[k, v] for k, v in found.items()])
    raise InvalidRequest(f"unknown view {name!r}")


def waterfall(found: Savings) -> list[tuple[str, Decimal]]:
    """Counterfactual → minus each lever → actual (for the savings plot)."""
    return [
        ("without levers", found.counterfactual_cost_usd),
        ("cache", -found.cache_saved_usd),
        ("routing", -found.routing_saved_usd),
        ("batch discount", -found.levers.batch_discount_usd),
        ("carbon/cost routes", -found.levers.preferred_saved_usd),
        ("actual", found.actual_cost_usd),
    ]


__all__ = [
    "VIEWS",
    "BackendUtilization",
    "CarbonRow",
    "MarginReport",
    "Options",
    "Overview",
    "Savings",
    "TaskStats",
    "TimePoint",
    "View",
    "build",
    "overview",
    "resolve",
    "waterfall",
]
