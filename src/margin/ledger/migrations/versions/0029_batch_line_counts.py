"""batches: a finished job keeps its lines' counts by status on its row (`line_counts`, what retrieve shows as
`margin.lines`) and its `batch_lines` rows are deleted, so that a finished job stores its row alone

Each line row of a finished job counted 128 bytes and its custom_id against `max_stored_bytes_per_key` for
ever (five 1,000-line jobs kept 667 KB of a 1 MB quota after every file was deleted). The jobs that ended
before this revision get their counts from their rows here, their rows deleted and `stored_bytes` set to their
row's (margin.batches.quota.job_row_bytes), a page of jobs at a time. NULL while a job runs.

The downgrade drops the column; the deleted rows are not made again (the files hold every line): retrieve of a
job that ended shows its `margin.lines` empty after it.

Revision ID: 0029
Revises: 0028
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None

FINAL = ("completed", "failed", "expired", "cancelled")
ROW_BYTES = 1024  # margin.batches.quota's, as of this revision
PAGE = 500  # jobs settled at a time

JOBS = sa.table(
    "batches",
    sa.column("id", sa.String),
    sa.column("status", sa.String),
    *(sa.column(name, sa.JSON) for name in ("meta", "tags", "errors", "plan", "line_counts")),
    sa.column("stored_bytes", sa.BigInteger),
)
LINES = sa.table("batch_lines", sa.column("batch_id", sa.String), sa.column("status", sa.String))
REFUSED = sa.table("batch_errors", sa.column("batch_id", sa.String))


def _size(value: Any) -> int:
    return 0 if value is None else len(orjson.dumps(value))


def upgrade() -> None:
    op.add_column("batches", sa.Column("line_counts", sa.JSON))
    bind = op.get_bind()
    last = ""
    while True:
        query = (
            sa.select(JOBS.c.id, JOBS.c.meta, JOBS.c.tags, JOBS.c.errors, JOBS.c.plan)
            .where(JOBS.c.status.in_(FINAL), JOBS.c.line_counts.is_(None), JOBS.c.id > last)
            .order_by(JOBS.c.id)
            .limit(PAGE)
        )
        jobs = list(bind.execute(query).all())
        if not jobs:
            return
        _settle(bind, jobs)
        last = jobs[-1].id


def _settle(bind: sa.Connection, jobs: list[Any]) -> None:
    """The jobs' counts by status onto their rows, and their line rows (and any refused line's row) deleted."""
    ids = [job.id for job in jobs]
    counted = sa.select(LINES.c.batch_id, LINES.c.status, sa.func.count()).where(LINES.c.batch_id.in_(ids))
    counts: dict[str, dict[str, int]] = {batch_id: {} for batch_id in ids}
    for batch_id, status, n in bind.execute(counted.group_by(LINES.c.batch_id, LINES.c.status)):
        counts[batch_id][str(status)] = int(n)
    values = [
        {
            "job": job.id,
            "counts": counts[job.id],
            "bytes": ROW_BYTES + sum(_size(v) for v in (job.meta, job.tags, job.errors, job.plan)),
        }
        for job in jobs
    ]
    update = JOBS.update().where(JOBS.c.id == sa.bindparam("job"))
    counted_bytes = {"line_counts": sa.bindparam("counts", type_=sa.JSON), "stored_bytes": sa.bindparam("bytes")}
    bind.execute(update.values(**counted_bytes), values)
    bind.execute(LINES.delete().where(LINES.c.batch_id.in_(ids)))
    bind.execute(REFUSED.delete().where(REFUSED.c.batch_id.in_(ids)))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("line_counts")
