"""Business metrics (DESIGN §4 unit metrics): gross margin and attach rate per feature or customer, and cost
per successful task.

Revenue comes from config (`revenue:` price per call and/or per seat per month, prorated over the window with
30-day months) plus optional CSV lines (`feature,customer,usd`: revenue earned in the reported window).
A *task* is the set of one tenant's requests sharing a `task_id` tag (a request without one is a task of its
own); the tenant is the org and team of the key (a key without a team: the key), so another team's equal tag
is another task (margin.ledger.measures.task). It belongs to the window (and team, feature…) of its earliest
request and counts all its requests. It is
*successful* when any of its requests has feedback with `success: true`. Cost per successful task = cost of
all requests of the graded tasks (those with any feedback) / successful tasks.

Team views (Window.team, a team key's own P&L; a key's, Window.key_id, alike): cost, calls and tasks are the
team's; per-call revenue counts the team's successful calls; per-seat revenue is not attributable to a team and
is left out (`seat_revenue` says so).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from margin.economics.money import usd_str
from margin.errors import InvalidRequest
from margin.ledger import read
from margin.ledger.read import Window
from margin.price_config import RevenueConfig, RevenueRule
from margin.report.metrics import per_1k, usd
from margin.report.queries import check_group
from margin.specs import MAX_USD
from margin.userfiles import read_text

SECONDS_PER_MONTH = Decimal(30 * 86400)
MAX_REVENUE_BYTES = 16 * 1024 * 1024
EARNING_CHUNK = 500  # revenue rules read per statement by a capped margin report (an IN list: bound its size)


@dataclass(frozen=True, slots=True)
class RevenueLine:
    """Revenue earned in the reported window (from an imported CSV)."""

    feature: str | None
    customer: str | None
    usd: Decimal


def load_revenue_csv(path: Path) -> list[RevenueLine]:
    """Read `feature,customer,usd` lines (header required; either of feature/customer may be empty)."""
    reader = csv.DictReader(io.StringIO(read_text(path, "revenue file", MAX_REVENUE_BYTES), newline=""))
    try:
        missing = {"usd"} - set(reader.fieldnames or [])
        if missing or not {"feature", "customer"} & set(reader.fieldnames or []):
            raise InvalidRequest(f"{path}: needs a header with usd and feature and/or customer columns")
        return [_revenue_line(path, number, row) for number, row in enumerate(reader, start=2)]
    except csv.Error as exc:
        raise InvalidRequest(f"{path}:{reader.line_num}: not CSV: {exc}") from exc


def _revenue_line(path: Path, number: int, row: dict[str, str]) -> RevenueLine:
    try:
        amount = Decimal(row["usd"])
    except (InvalidOperation, TypeError) as exc:
        raise InvalidRequest(f"{path}:{number}: usd {row.get('usd')!r} is not a number") from exc
    if not amount.is_finite() or amount.copy_abs() > MAX_USD:
        raise InvalidRequest(f"{path}:{number}: usd must be a finite amount within ±{MAX_USD}")
    return RevenueLine(row.get("feature") or None, row.get("customer") or None, amount)


def window_seconds(connection: sa.Connection, window: Window, now: datetime) -> Decimal:
    """The window's length; an open start begins at the first ledger row in it, an open end is now."""
    first = read.first_at(connection, window).get(None) if window.since is None else None
    if window.since is None and first is None:
        return Decimal(0)
    return Decimal(window.seconds(first, now))


def rule_revenue(rule: RevenueRule, ok_calls: int, seconds: Decimal, seats: bool = True) -> Decimal:
    total = Decimal(0)
    if rule.price_per_call is not None:
        total += rule.price_per_call * ok_calls
    if seats and rule.price_per_seat_month is not None:
        total += rule.price_per_seat_month * rule.seats * seconds / SECONDS_PER_MONTH
    return total


@dataclass(frozen=True, slots=True)
class MarginRow:
    key: str | None  # the feature (or customer) tag; None = untagged requests
    requests: int
    ok_requests: int  # HTTP < 400: what price_per_call is paid for
    customers: int  # distinct `customer` tags among its requests
    attach_rate: float | None  # customers / active customers in the window
    cost_usd: Decimal
    unpriced_requests: int
    usd_per_1k_tokens: Decimal | None
    revenue_usd: Decimal | None  # None when nothing in config or CSV prices it
    gross_margin: Decimal | None  # (revenue − cost) / revenue; None without revenue

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "requests": self.requests,
            "ok_requests": self.ok_requests,
            "customers": self.customers,
            "attach_rate": None if self.attach_rate is None else round(self.attach_rate, 6),
            "cost_usd": usd_str(self.cost_usd),
            "unpriced_requests": self.unpriced_requests,
            "usd_per_1k_tokens": usd_str(self.usd_per_1k_tokens),
            "revenue_usd": usd_str(self.revenue_usd),
            "gross_margin": usd_str(self.gross_margin, 6),
        }


@dataclass(frozen=True, slots=True)
class MarginReport:
    by: str  # feature | customer
    active_customers: int
    window_seconds: Decimal
    rows: list[MarginRow]

    team: str | None = None  # a team's view
    partial: bool = False  # a team's or a key's view: per-seat revenue left out
    groups_total: int | None = None  # `rows` and the groups in `others` (None: every one is in `rows`)
    others: dict[str, Any] | None = None  # the groups past `limit`, added up (`margins`); None: none left out

    def to_json(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "team": self.team,
            "seat_revenue": "not attributable to a team: left out" if self.partial else "prorated over the window",
            "active_customers": self.active_customers,
            "window_seconds": str(self.window_seconds.quantize(Decimal("0.001"))),
            "groups": [row.to_json() for row in self.rows],
            "groups_total": len(self.rows) if self.groups_total is None else self.groups_total,
            "others": self.others,
        }


def margins(
    engine: sa.Engine,
    window: Window,
    revenue: RevenueConfig,
    lines: Sequence[RevenueLine] = (),
    by: str = "feature",
    now: datetime | None = None,
    with_attach: bool = True,
    limit: int | None = None,
) -> MarginReport:
    """Per feature (or customer): cost, revenue, gross margin, attach rate (distinct customers: the costly
    part; `with_attach=False` leaves customers and attach rates at 0/None); biggest cost first. `limit` (the
    dashboard's): the first `limit` groups by cost, and every group that earns revenue, listed; the rest added
    up under `others` (feature and customer tags are the caller's: a group per request, else)."""
    if by not in ("feature", "customer"):
        raise InvalidRequest("margins are per feature or per customer", param="by")
    rules = revenue.features if by == "feature" else revenue.customers
    imported: dict[str | None, Decimal] = {}
    for line in lines:
        name = line.feature if by == "feature" else line.customer
        imported[name] = imported.get(name, Decimal(0)) + line.usd
    with engine.connect() as connection:
        found, count, rest = _listed(connection, window, by, limit, {*rules, *imported})
        wanted = None if limit is None else (set(found) if by == "feature" else ())
        customers, active = read.attach(connection, window, wanted) if with_attach else ({}, 0)
        seconds = window_seconds(connection, window, now or datetime.now().astimezone())
    listed = len(found)  # groups with requests listed; the rest of `count` is under `others`
    quiet: set[str] = set()  # earning revenue with no traffic in the window: a row of their own, in the whole
    if not window.partial:  # the operator's view (not a team's, key's, org's)
        quiet = {*rules, *(name for name in imported if name is not None)} - set(found)
        found.update({name: read.zero() for name in sorted(quiet)})
    out = [
        _margin_row(by, key, sums, rules, imported, seconds, customers, active, window) for key, sums in found.items()
    ]
    out = [row for row in out if row.key not in quiet or row.revenue_usd]
    out.sort(key=lambda r: (-r.cost_usd, -r.requests, str(r.key)))
    others = None if rest is None else _others(count - listed, rest)
    total = count + sum(1 for row in out if row.key in quiet)  # capped or not: every row, and those in `others`
    return MarginReport(by, active, seconds, out, window.team, window.partial, total, others)


def _listed(
    connection: sa.Connection, window: Window, by: str, limit: int | None, earning: set[str | None]
) -> tuple[dict[Any, read.Sums], int, read.Sums | None]:
    """The groups `margins` lists, how many groups the window has, and the sums of those left out (None: none
    was). Without `limit`, every group; with it, the first `limit` by cost (ranked and cut in SQL:
    margin.ledger.read.top) and each group `earning` names (revenue from config or CSV, bounded by them: the
    gross margin counts its revenue wherever its cost ranks it), read by one grouped query per
    EARNING_CHUNK names (`key IN (…)`), not one per name: a statement per rule made every overview load
    ~300 reads with 300 rules."""
    if limit is None:
        found = read.grouped(connection, window, by)
        return found, len(found), None
    kept, count, rest = read.top(connection, window, by, limit)
    found = dict(kept)
    names = sorted(name for name in earning if name and name not in found)  # a group's key is never ''
    for start in range(0, len(names), EARNING_CHUNK):
        if count == len(found):
            break
        chunk = tuple(names[start : start + EARNING_CHUNK])
        for name, sums in read.grouped(connection, window, by, match=(by, chunk)).items():
            found[name] = sums
            rest = read.minus(rest, sums)
    return found, count, rest if count > len(found) else None


def _others(groups: int, sums: read.Sums) -> dict[str, Any]:
    """The groups a capped margin report leaves out, added up (none of them earns revenue)."""
    cost = usd(sums["cost_nanousd"])
    return {
        "groups": groups,
        "requests": sums["requests"],
        "ok_requests": sums["ok_requests"],
        "cost_usd": usd_str(cost),
        "unpriced_requests": sums["unpriced"],
        "usd_per_1k_tokens": usd_str(per_1k(cost, sums["priced_tokens"])),
    }


def _margin_row(
    by: str,
    name: Any,
    sums: read.Sums,
    rules: dict[str, RevenueRule],
    imported: dict[str | None, Decimal],
    seconds: Decimal,
    customers: dict[Any, int],
    active: int,
    window: Window,
) -> MarginRow:
    ok_calls, cost = sums["ok_requests"], usd(sums["cost_nanousd"])
    rule = rules.get(name) if name is not None else None
    earned = rule_revenue(rule, ok_calls, seconds, seats=not window.partial) if rule is not None else None
    if name in imported:
        earned = (earned or Decimal(0)) + imported[name]
    margin = (earned - cost) / earned if earned else None
    distinct = customers.get(name, 0) if by == "feature" else int(name is not None)
    attach = distinct / active if active and by == "feature" else None
    priced = per_1k(cost, sums["priced_tokens"])
    return MarginRow(name, sums["requests"], ok_calls, distinct, attach, cost, sums["unpriced"], priced, earned, margin)


@dataclass(frozen=True, slots=True)
class TaskStats:
    key: str | None  # group (feature, team…) or None for all
    tasks: int
    graded_tasks: int  # tasks with any feedback
    successful_tasks: int
    cost_usd: Decimal  # all requests of all tasks
    graded_cost_usd: Decimal  # requests of graded tasks
    unpriced_requests: int
    mean_score: float | None
    value_usd: Decimal | None  # Σ value posted with feedback

    @property
    def success_rate(self) -> float | None:
        return self.successful_tasks / self.graded_tasks if self.graded_tasks else None

    @property
    def cost_per_successful_task_usd(self) -> Decimal | None:
        return self.graded_cost_usd / self.successful_tasks if self.successful_tasks else None

    def to_json(self) -> dict[str, Any]:
        rate = self.success_rate
        return {
            "key": self.key,
            "tasks": self.tasks,
            "graded_tasks": self.graded_tasks,
            "successful_tasks": self.successful_tasks,
            "success_rate": None if rate is None else round(rate, 6),
            "cost_usd": usd_str(self.cost_usd),
            "graded_cost_usd": usd_str(self.graded_cost_usd),
            "cost_per_successful_task_usd": usd_str(self.cost_per_successful_task_usd),
            "unpriced_requests": self.unpriced_requests,
            "mean_score": None if self.mean_score is None else round(self.mean_score, 6),
            "value_usd": usd_str(self.value_usd),
        }


def tasks(engine: sa.Engine, window: Window, by: str | None = None) -> list[TaskStats]:
    """Tasks, success rate and cost per successful task, overall or per group (e.g. feature)."""
    check_group(by)
    with engine.connect() as connection:
        found = read.task_sums(connection, window, by)
    out = [
        TaskStats(
            key if by else None,
            t.tasks,
            t.graded,
            t.successful,
            usd(t.cost_nanousd),
            usd(t.graded_cost_nanousd),
            t.unpriced,
            t.score_sum / t.score_n if t.score_n else None,
            None if t.value_nanousd is None else usd(t.value_nanousd),
        )
        for key, t in found.items()
    ]
    if by is None and not out:
        out.append(TaskStats(None, 0, 0, 0, Decimal(0), Decimal(0), 0, None, None))
    return sorted(out, key=lambda s: (-s.cost_usd, str(s.key)))
