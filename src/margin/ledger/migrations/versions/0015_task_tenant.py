"""read model: a task is one tenant's, so another team's requests and feedback with an equal `task_id` tag are
another task

A task was `t:<task_id>` for every key alike: any key may set any tag, so a team that sent requests (and
feedback with a value) tagged with another team's task id was added to that team's task, or took its anchor
and with it the task. A task is now `t:<org>/<team>/<task_id>` (org and team as `<length>:<value>`, `-` for
NULL; a key without a team is `k<key>` in its org), margin.ledger.measures.task. The stored identities are
rewritten: ledger_tasks and ledger_task_daily are added up again from the ledger (the tasks only: no other
rollup changes; a full `rollup.rebuild` gives the same rows), and each feedback row is linked again to its
request's task; the columns that hold a task are widened to the new form's length (on PostgreSQL in place;
SQLite copies feedback, and ledger_tasks empty). The downgrade links and adds up the old form again.

The identities are frozen here as of this revision (a test keeps `task("new", …)` equal to measures.task's).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from margin.ledger import rollup

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

KINDS = "('request', 'cache_hit')"
ANCHOR = ("team", "key_id", "model", "backend", "region", "feature", "customer")
DIMS = {"": "''", "feature": "feature", "customer": "customer", "model": "model", "backend": "backend",
        "region": "region", "key": "key_id"}  # fmt: skip
LENGTHS = {"old": 300, "new": 512}


def tag(dialect: str, r: str, key: str) -> str:
    if dialect == "sqlite":
        return f"json_extract({r}.tags, '$.\"{key}\"')"
    return f"({r}.tags ->> '{key}')"


def sized(value: str) -> str:
    return f"(CASE WHEN {value} IS NULL THEN '-' ELSE CAST(LENGTH({value}) AS TEXT) || ':' || {value} END)"


def task(form: str, dialect: str, r: str) -> str:
    """A ledger row's task, in the old form (`t:<task_id>`) or the new one (`t:<org>/<team>/<task_id>`)."""
    tenant = ""
    if form == "new":
        who = f"(CASE WHEN {r}.team IS NULL THEN 'k' || {sized(f'{r}.key_id')} ELSE {sized(f'{r}.team')} END)"
        tenant = f" || {sized(f'{r}.org')} || '/' || {who} || '/'"
    return f"COALESCE('t:'{tenant} || {tag(dialect, r, 'task_id')}, 'r:' || {r}.request_id)"


def upgrade() -> None:
    clear()
    widen("new")
    add_up("new")
    link("new")


def downgrade() -> None:
    clear()
    link("old")  # before the column is narrowed: the new form may not fit it
    widen("old")
    add_up("old")


def clear() -> None:
    """Empty the task rollups (before a SQLite copy of ledger_tasks, so that copies no rows)."""
    rollup.lock(op.get_bind())  # no ingest adds a task until the migration commits
    op.execute("DELETE FROM ledger_tasks")
    op.execute("DELETE FROM ledger_task_daily")


def widen(form: str) -> None:
    """The task columns at the form's length (varchar: PostgreSQL checks it, SQLite only declares it)."""
    for table in ("ledger_tasks", "feedback"):
        with op.batch_alter_table(table) as batch:
            batch.alter_column("task", type_=sa.String(LENGTHS[form]), existing_nullable=table == "feedback")


def add_up(form: str) -> None:
    """ledger_tasks and ledger_task_daily from the ledger, in `form`, as a rebuild adds them up: a task's
    anchor is its earliest row (ties by id), its sums those of all its rows."""
    dialect = op.get_bind().dialect.name
    rows = (
        f"SELECT {task(form, dialect, 'l')} AS task, l.id, l.created_at, l.team, l.key_id, l.model, l.backend, "
        f"l.region, {tag(dialect, 'l', 'feature')} AS feature, {tag(dialect, 'l', 'customer')} AS customer, "
        f"COALESCE(l.cost_nanousd, 0) AS cost, CASE WHEN l.cost_nanousd IS NULL THEN 1 ELSE 0 END AS unpriced "
        f"FROM ledger l WHERE l.kind IN {KINDS}"
    )
    anchor = ", ".join(ANCHOR)
    picked = (
        f"SELECT task, created_at AS anchor_at, {anchor}, ROW_NUMBER() OVER w AS pick, COUNT(*) OVER w AS requests, "
        f"SUM(cost) OVER w AS cost_nanousd, SUM(unpriced) OVER w AS unpriced FROM ({rows}) r "
        "WINDOW w AS (PARTITION BY task ORDER BY created_at, id "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)"
    )
    names = f"task, anchor_at, {anchor}, requests, cost_nanousd, unpriced"
    op.execute(f"INSERT INTO ledger_tasks ({names}) SELECT {names} FROM ({picked}) t WHERE t.pick = 1")
    if dialect == "sqlite":
        day = "strftime('%Y-%m-%d', anchor_at)"
    else:
        day = "to_char(anchor_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    for dim, column in DIMS.items():
        op.execute(
            "INSERT INTO ledger_task_daily (dim, day, team, value, tasks, cost_nanousd, unpriced) "
            f"SELECT '{dim}', {day}, COALESCE(team, ''), COALESCE({column}, ''), COUNT(*), SUM(cost_nanousd), "
            "SUM(unpriced) FROM ledger_tasks GROUP BY 2, 3, 4"
        )


def link(form: str) -> None:
    """Every feedback row linked to its request's task in `form` (as margin.ledger.feedback links it: the
    task of a traffic row of its request id, else none)."""
    dialect = op.get_bind().dialect.name
    op.execute(
        f"UPDATE feedback SET task = (SELECT {task(form, dialect, 'l')} FROM ledger l "
        f"WHERE l.request_id = feedback.request_id AND l.kind IN {KINDS} LIMIT 1)"
    )
