"""The one read model over the ledger. Reports (margin.report), the dashboard (margin.dashboard), the usage
API and budget reconciliation (margin.governance) render what it returns and hold no SQL of their own.

    Window(since, until, team=None, key_id=None, rollup=True)   what a read covers (window.py)
    plan(window, grain) / grain_for(...)                         whole buckets from rollups, edges from rows
    grouped(conn, window, by) -> {key: Sums}                      additive integer sums (sums.py)
    top(conn, window, by, limit) -> (listed, groups, rest)        the first `limit` groups, ranked in SQL (top.py)
    first_at(conn, window, by) -> {key: datetime}                 first row per group (open windows)
    histograms(conn, window, by, metric), from_histogram(h, q)   latency, ±4.43 % (latency.py)
    exact(conn, window, metric, qs)                              exact nearest-rank percentiles
    task_sums(conn, window, by) -> {key: TaskSums}                tasks, graded, successful… (tasks.py)
    budget_spent(conn, kind, value, usd, start, end, org)         a budget window's spend (budget.py)
    recorded(conn, request_ids) -> {request_id}                  which requests have their row (budget.py)
    attach(conn, window, features) -> (customers per feature, active)   distinct customers (attach.py)

Every function takes a SQLAlchemy Connection of the ledger database: the engine is its owner's (Services
in the gateway, the CLI command otherwise); reads never open the database themselves.
"""

from margin.ledger.read.attach import attach
from margin.ledger.read.budget import budget_spent, recorded
from margin.ledger.read.latency import exact, from_histogram, histograms, nearest_rank, percentile
from margin.ledger.read.plan import Part, grain_for, plan, plan_days_then_hours
from margin.ledger.read.sums import BUCKETS, Sums, first_at, grouped, minus, tag_keys, total, totals, zero
from margin.ledger.read.tasks import TaskSums, task_sums
from margin.ledger.read.top import top
from margin.ledger.read.window import Window, as_utc, parse_when, scoped, team_org

__all__ = [
    "BUCKETS",
    "Part",
    "Sums",
    "TaskSums",
    "Window",
    "as_utc",
    "attach",
    "budget_spent",
    "exact",
    "first_at",
    "from_histogram",
    "grain_for",
    "grouped",
    "histograms",
    "minus",
    "nearest_rank",
    "parse_when",
    "percentile",
    "plan",
    "plan_days_then_hours",
    "recorded",
    "scoped",
    "tag_keys",
    "task_sums",
    "team_org",
    "top",
    "total",
    "totals",
    "zero",
]
