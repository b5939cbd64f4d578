"""Tasks: requests sharing a `task_id` tag (a request without one is a task of its own). A task belongs to
the window, team and groups of its *anchor*, its earliest request, and counts all its requests. It is graded
when any of its requests has feedback, successful when any has `success: true`.

Read from ledger_tasks (one row per task, kept per batch) joined with the feedback of the window's requests;
or, for groupings ledger_tasks does not keep and for `Window(rollup=False)`, from the same table computed
from ledger rows (the anchor = the earliest row, ties by insertion order, as ledger_tasks keeps it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from margin.ledger import measures as m
from margin.ledger.models import feedback, ledger, ledger_tasks
from margin.ledger.read.sums import row_group
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


def _source(connection: sa.Connection, window: Window, by: str | None) -> sa.Subquery:
    if window.rollup and window.key_id is None and (by is None or by in ANCHOR_GROUPS):
        grp = ledger_tasks.c[ANCHOR_GROUPS[by]] if by else sa.null()
        return sa.select(*ledger_tasks.c, grp.label("grp")).subquery()
    return _from_rows(connection, window, by)


def _anchored(t: sa.Subquery, window: Window) -> list[sa.ColumnElement[bool]]:
    clauses = []
    if window.since is not None:
        clauses.append(t.c.anchor_at >= window.since)
    if window.until is not None:
        clauses.append(t.c.anchor_at < window.until)
    if window.team is not None:
        clauses.append(t.c.team == window.team)
    return clauses


def _graded(connection: sa.Connection, window: Window) -> sa.Subquery:
    """Feedback per task, over the requests a task anchored in the window can have (created since then)."""
    task: sa.ColumnElement[Any] = sa.literal_column(m.task(connection.dialect.name, "ledger"))
    clauses: list[sa.ColumnElement[bool]] = [ledger.c.kind.in_(m.KINDS)]
    if window.since is not None:
        clauses.append(ledger.c.created_at >= window.since)
    if window.key_id is not None:
        clauses.append(ledger.c.key_id == window.key_id)
    return (
        sa.select(
            task.label("task"),
            sa.func.max(sa.case((feedback.c.success.is_(True), 1), else_=0)).label("ok"),
            sa.func.sum(feedback.c.score).label("score_sum"),
            sa.func.count(feedback.c.score).label("score_n"),
            sa.func.sum(feedback.c.value_nanousd).label("value"),
        )
        .select_from(feedback.join(ledger, ledger.c.request_id == feedback.c.request_id))
        .where(*clauses)
        .group_by(task)
        .subquery()
    )


def task_sums(connection: sa.Connection, window: Window, by: str | None = None) -> dict[Any, TaskSums]:
    """Task figures per value of `by` (the anchor's; None: one group)."""
    t = _source(connection, window, by)
    where = _anchored(t, window)
    totals = sa.select(t.c.grp, sa.func.count(), sa.func.sum(t.c.cost_nanousd), sa.func.sum(t.c.unpriced))
    found = {row[0]: [int(row[1]), int(row[2] or 0), int(row[3] or 0)] for row in
             connection.execute(totals.where(*where).group_by(t.c.grp))}  # fmt: skip
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
