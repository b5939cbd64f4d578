"""Tasks: one tenant's requests sharing a `task_id` tag (a request without one is a task of its own); the
tenant is the org and team, or a team-less key (measures.task), so all of a task's requests are of its team and
another team's equal tag is another task. A task belongs to the window, team and groups of its *anchor*, its
earliest request, and counts all its requests. It is graded
when any of its requests has feedback, successful when any has `success: true`.

Counts and cost come from ledger_task_daily for the window's whole days and from ledger_tasks (one row per
task, by anchor time) for its partial edges; grading from the feedback posted since the window began, by the
task each was linked to when posted (margin.ledger.feedback). For groupings these tables do not keep, and
for `Window(rollup=False)`, the same task table is computed from ledger rows (anchor = the earliest row, ties
by insertion order, as ledger_tasks keeps it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from margin.ledger import measures as m
from margin.ledger.models import feedback, ledger, ledger_task_daily, ledger_tasks
from margin.ledger.read.plan import grain_for, plan
from margin.ledger.read.sums import _time, row_group
from margin.ledger.read.window import Window

ANCHOR_GROUPS = {"team": "team", "key": "key_id", "model": "model", "backend": "backend", "region": "region",
                 "feature": "feature", "customer": "customer"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class TaskSums:
    tasks: int = 0
    graded: int = 0
    successful: int = 0
    cost_nanousd: int = 0  # all requests of the tasks
    graded_cost_nanousd: int = 0  # requests of graded tasks
    unpriced: int = 0
    score_sum: float = 0.0
    score_n: int = 0
    value_nanousd: int | None = None  # Σ value posted with feedback (None: none posted)


def _from_rows(connection: sa.Connection, window: Window, by: str | None) -> sa.Subquery:
    """ledger_tasks computed from ledger rows (with `grp`: the anchor's value of `by`)."""
    dialect = connection.dialect.name
    task: sa.ColumnElement[Any] = sa.literal_column(m.task(dialect, "ledger"))
    grp = row_group(connection, by) if by else sa.null()
    inner = (
        sa.select(
            task.label("task"),
            ledger.c.created_at.label("anchor_at"),
            ledger.c.team,
            ledger.c.org,
            grp.label("grp"),
            sa.func.row_number().over(partition_by=task, order_by=(ledger.c.created_at, ledger.c.id)).label("pick"),
            sa.func.count().over(partition_by=task).label("requests"),
            sa.func.sum(sa.func.coalesce(ledger.c.cost_nanousd, 0)).over(partition_by=task).label("cost_nanousd"),
            sa.func.sum(sa.case((ledger.c.cost_nanousd.is_(None), 1), else_=0))
            .over(partition_by=task)
            .label("unpriced"),
        )
        .where(*Window(key_id=window.key_id).where())
        .subquery()
    )
    return sa.select(inner).where(inner.c.pick == 1).subquery()


def _rolled_up(window: Window, by: str | None) -> bool:
    return window.rollup and window.key_id is None and window.org is None and (by is None or by in ANCHOR_GROUPS)


def _source(connection: sa.Connection, window: Window, by: str | None) -> sa.Subquery:
    if _rolled_up(window, by):
        grp = ledger_tasks.c[ANCHOR_GROUPS[by]] if by else sa.null()
        return sa.select(*ledger_tasks.c, grp.label("grp")).subquery()
    return _from_rows(connection, window, by)


def _counts(connection: sa.Connection, window: Window, by: str | None) -> dict[Any, list[int]]:
    """(tasks, cost, unpriced) per group: whole days from ledger_task_daily, edges from the task table."""
    out: dict[Any, list[int]] = {}
    parts = plan(window, "day" if _rolled_up(window, by) and grain_for(window, [], ()) else None)
    for part in parts:
        if part.source == "rows":
            t = _source(connection, window, by)
            query = sa.select(t.c.grp, sa.func.count(), sa.func.sum(t.c.cost_nanousd), sa.func.sum(t.c.unpriced))
            rows = connection.execute(
                query.where(*_anchored(t, window.between(part.since, part.until))).group_by(t.c.grp)
            )
        else:
            d = ledger_task_daily
            dim = "" if by in (None, "team") else by
            grp = sa.func.nullif(d.c.team if by == "team" else d.c.value, "") if by else sa.null()
            clauses = [d.c.dim == dim, *_time(d, "day", part, "day")]
            if window.team is not None:
                clauses.append(d.c.team == window.team)
            query = sa.select(
                grp.label("grp"), sa.func.sum(d.c.tasks), sa.func.sum(d.c.cost_nanousd), sa.func.sum(d.c.unpriced)
            )
            rows = connection.execute(query.where(*clauses).group_by(grp) if by else query.where(*clauses))
        for row in rows:
            into = out.setdefault(row[0], [0, 0, 0])
            for i in range(3):
                into[i] += int(row[i + 1] or 0)
    return {key: sums for key, sums in out.items() if sums[0]}


def _anchored(t: sa.Subquery, window: Window) -> list[sa.ColumnElement[bool]]:
    clauses = []
    if window.since is not None:
        clauses.append(t.c.anchor_at >= window.since)
    if window.until is not None:
        clauses.append(t.c.anchor_at < window.until)
    if window.team is not None:
        clauses.append(t.c.team == window.team)
    if window.org is not None:
        clauses.append(t.c.org.is_(None) if window.org[0] is None else t.c.org == window.org[0])
    return clauses


def _graded(connection: sa.Connection, window: Window) -> sa.Subquery:
    """Feedback per task: the feedback posted since the window began (a task anchored in the window has its
    requests, and their feedback, from then on), by the task it was linked to when posted. One key's view
    joins the requests to keep that key's only."""
    grades = [
        sa.func.max(sa.case((feedback.c.success.is_(True), 1), else_=0)).label("ok"),
        sa.func.sum(feedback.c.score).label("score_sum"),
        sa.func.count(feedback.c.score).label("score_n"),
        sa.func.sum(feedback.c.value_nanousd).label("value"),
    ]
    clauses: list[sa.ColumnElement[bool]] = [feedback.c.task.is_not(None)]
    if window.since is not None:
        clauses.append(feedback.c.created_at >= window.since)
    query = sa.select(feedback.c.task.label("task"), *grades)
    if window.key_id is not None:
        query = query.join(ledger, ledger.c.request_id == feedback.c.request_id)
        clauses.append(ledger.c.key_id == window.key_id)
    return query.where(*clauses).group_by(feedback.c.task).subquery()


def task_sums(connection: sa.Connection, window: Window, by: str | None = None) -> dict[Any, TaskSums]:
    """Task figures per value of `by` (the anchor's; None: one group)."""
    found = _counts(connection, window, by)
    t = _source(connection, window, by)
    where = _anchored(t, window)
    g = _graded(connection, window)
    graded = (
        sa.select(
            t.c.grp,
            sa.func.count(),
            sa.func.sum(g.c.ok),
            sa.func.sum(t.c.cost_nanousd),
            sa.func.sum(g.c.score_sum),
            sa.func.sum(g.c.score_n),
            sa.func.sum(g.c.value),
        )
        .select_from(g.join(t, t.c.task == g.c.task))
        .where(*where)
        .group_by(t.c.grp)
    )
    grades = {row[0]: row for row in connection.execute(graded)}
    out = {}
    for key, (tasks, cost, unpriced) in found.items():
        r = grades.get(key)
        out[key] = TaskSums(
            tasks,
            int(r[1]) if r else 0,
            int(r[2] or 0) if r else 0,
            cost,
            int(r[3] or 0) if r else 0,
            unpriced,
            float(r[4] or 0.0) if r else 0.0,
            int(r[5] or 0) if r else 0,
            None if r is None or r[6] is None else int(r[6]),
        )
    return out
