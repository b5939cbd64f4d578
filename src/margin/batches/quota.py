"""What a key makes the gateway store, counted against `batches.max_stored_bytes_per_key`.

A key's stored bytes are its files' (`batch_files.bytes`: uploads, output and error files) and its jobs'
`batches.stored_bytes`: what a job keeps besides its files. That is its row's values (metadata, tags, the
errors it lists, its plan) and, while it runs, its lines' bodies and the answers so far and its refused lines'
rows (`batch_errors`). When it ends those are written to its output and error files (counted there) and its
line and refused-line rows deleted: an ended job stores its row alone, which keeps its lines' counts by status
(`line_counts`, of fixed size: in ROW_BYTES), so deleting its files frees the key's space. Every row also counts
a fixed size for its own columns (ROW_BYTES, LINE_BYTES), so a key cannot store without bound in many small
files or jobs.

The sum is one query per table over the key's rows (both indexed by key_id); the quota bounds how many there
are (every file and job counts at least ROW_BYTES). It is checked just before storing, in the same transaction
and under the key's lock (`lock`: else 100 uploads at once each saw the same sum and all passed): an upload, a
new job (room for its row and a copy of its input's lines) and a job's validation (its exact lines and refused
lines). A job's answers
are always kept and counted as they land: a key may go over by what its running jobs answer (at most
`batches.max_active_jobs_per_key` of them), and its next upload or job is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from margin.batches import expiry
from margin.errors import PayloadTooLarge
from margin.ledger.models import batch_files, batches

ROW_BYTES = 1024  # a file's or job's row without its values: ids, owner, statuses, times, a 256-character filename
LINE_BYTES = 128  # a line's or refused line's row without its values: ids, numbers, status, request id, times
CODE = "storage_quota_exceeded"
LOCK_SPACE = 7_311_542  # pg_advisory_xact_lock(space, key): the quota's (margin.ledger.rollup's writers: 7_311_541)


def owned(table: sa.Table, key_id: str | None) -> sa.ColumnElement[bool]:
    return table.c.key_id.is_(None) if key_id is None else table.c.key_id == key_id


def size(value: Any) -> int:
    """The bytes of a JSON value as stored (0 for none)."""
    return 0 if value is None else len(orjson.dumps(value))


def job_row_bytes(*values: Any) -> int:
    """A job's row: its own columns and its JSON values (metadata, tags, the errors it lists, its plan)."""
    return ROW_BYTES + sum(size(value) for value in values)


def lines_bytes(lines: Iterable[tuple[str | None, int]], refused: Iterable[dict[str, Any]]) -> int:
    """A job's lines as validated, each (custom_id, bytes of its body), and its refused lines' errors."""
    valid = sum(LINE_BYTES + len((custom_id or "").encode()) + body for custom_id, body in lines)
    return valid + sum(LINE_BYTES + size(error) for error in refused)


async def used(connection: AsyncConnection, key_id: str | None, now: datetime | None = None) -> int:
    """The bytes a key stores now: its files (those not expired at `now`, when given: an expired file is gone
    for its key before the sweep deletes it) and its jobs."""
    files = sa.func.coalesce(sa.func.sum(batch_files.c.bytes), 0) + sa.func.count() * ROW_BYTES
    where = [owned(batch_files, key_id)]
    if now is not None:
        where.append(expiry.live(now))
    in_files = await connection.scalar(sa.select(files).where(*where))
    jobs = sa.select(sa.func.coalesce(sa.func.sum(batches.c.stored_bytes), 0)).where(owned(batches, key_id))
    return int(in_files or 0) + int(await connection.scalar(jobs) or 0)


async def lock(connection: AsyncConnection, key_id: str | None) -> None:
    """Hold the key's quota until the transaction ends, so its checks and writes go one at a time. PostgreSQL: an
    advisory lock on the key. SQLite: the database's write lock (a write statement that changes nothing), so
    it must be the transaction's first statement: a transaction that read before it may not write after
    another's commit."""
    if connection.dialect.name == "postgresql":
        held = {"space": LOCK_SPACE, "key": key_id or ""}
        await connection.execute(sa.text("SELECT pg_advisory_xact_lock(:space, hashtext(:key))"), held)
    else:
        await connection.exec_driver_sql("UPDATE batches SET stored_bytes = stored_bytes WHERE 0")


def refusal(quota: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"this key would store more than {quota} bytes (batches.max_stored_bytes_per_key: its files, and its jobs' "
        "rows and lines); delete some files first",
        code=CODE,
    )


async def check(
    connection: AsyncConnection, key_id: str | None, adding: int, quota: int, now: datetime | None = None
) -> None:
    """Refuse (413 storage_quota_exceeded) what would take the key past its quota (as stored at `now`)."""
    if await used(connection, key_id, now) + adding > quota:
        raise refusal(quota)
