"""When files expire: OpenAI's `expires_after` of an upload and `output_expires_after` of a job (for its output
and error files), `{"anchor": "created_at", "seconds": 3600 to 2592000}`, the file's creation plus the seconds.

An upload without one expires `batches.upload_expires_after_s` after its creation (30 days, OpenAI's default
for purpose=batch; null or 0: kept until deleted); an output or error file of a job without one is kept until
deleted. An expired file is gone for its key at once (every read of a file checks its expiry: it answers the
404 of a file that does not exist) and its rows are deleted by the batch worker's sweep (`sweep`, a page at a
time on each of its passes), as `DELETE /v1/files/{id}` deletes them; until then the quota does not count it
(margin.batches.quota.used). A job already created on an upload that expires goes on, as OpenAI's do: the
sweep keeps the upload while a job waits to be validated on it (the worker reads it then), and a validated
job runs on its own copy of the lines."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from margin.errors import InvalidRequest
from margin.ledger.models import batch_file_parts, batch_files, batches

MIN_S = 3_600  # an hour: OpenAI's bounds
MAX_S = 2_592_000  # 30 days
SWEEP_PAGE = 100  # expired files deleted at a time (each may have many parts of 1 MiB)


def seconds_of(anchor: Any, seconds: Any, param: str) -> int:
    """The seconds of an upload's `expires_after`, from its form fields (text, or a file part where a field was
    expected); 400 naming what is wrong. A job's `output_expires_after` is JSON, checked by its model
    (margin.api.batches.ExpiresAfter)."""
    if anchor != "created_at":
        raise InvalidRequest(f"{param}.anchor must be created_at (the only anchor)", param=f"{param}.anchor")
    digits = isinstance(seconds, str) and seconds.isascii() and seconds.isdigit() and len(seconds) <= 8  # not "²"
    if not digits or not MIN_S <= int(seconds) <= MAX_S:
        raise InvalidRequest(
            f"{param}.seconds must be an integer from {MIN_S} (1 hour) to {MAX_S} (30 days)", param=f"{param}.seconds"
        )
    return int(seconds)


def live(now: datetime) -> sa.ColumnElement[bool]:
    """Files that have not expired at `now`."""
    return sa.or_(batch_files.c.expires_at.is_(None), batch_files.c.expires_at > now)


async def sweep(engine: AsyncEngine, now: datetime, limit: int = SWEEP_PAGE) -> int:
    """Delete up to `limit` files expired at `now` (their parts too), as a delete would, in one transaction
    (oldest expiry first, on the expiry index); how many went. Workers that sweep at once delete each once.
    An upload a job waits to be validated on is kept until it has been (the worker reads it then)."""
    waited_on = sa.exists().where(batches.c.input_file_id == batch_files.c.id, batches.c.status == "validating")
    expired = sa.and_(batch_files.c.expires_at <= now, ~waited_on)
    async with engine.begin() as connection:
        query = sa.select(batch_files.c.id).where(expired).order_by(batch_files.c.expires_at).limit(limit)
        ids = list((await connection.execute(query)).scalars())
        if not ids:
            return 0
        gone = await connection.execute(batch_files.delete().where(batch_files.c.id.in_(ids), expired))
        await connection.execute(batch_file_parts.delete().where(batch_file_parts.c.file_id.in_(ids)))
    return int(gone.rowcount)
