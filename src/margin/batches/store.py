"""The Batch API's durable state (tables `batch_files`, `batches`, `batch_lines` in the ledger database).

What a key stores is bounded by `batches.max_stored_bytes_per_key` (margin.batches.quota) and its jobs not yet
finished by `batches.max_active_jobs_per_key`, both checked in the transaction that would store more.

Every state change is one transaction guarded by the state it expects (`WHERE status = …`, and for a line
`AND attempts = n`), so a worker that lost its lease, a restart or a repeated call changes nothing twice.
A file or job is visible only to the key that created it (another key's id answers 404)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from margin.batches import expiry, quota
from margin.errors import Conflict, InvalidRequest, NotFound, RateLimited
from margin.ledger.models import batch_file_parts, batch_files, batch_lines, batches, ledger
from margin.specs import BatchConfig
from margin.types import Usage

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
FINAL = ("completed", "failed", "expired", "cancelled")
LINE_OPEN = ("pending", "running")
UPLOAD_CHUNK = 1 << 20  # an uploaded file is sent back in parts of this size
FILE_COLUMNS = [c for c in batch_files.c if c.name != "content"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
TIME_HEX = 14  # an id's creation time: microseconds since 1970 (14 hex digits reach the year 4253)
RANDOM_HEX = 18


def new_id(prefix: str, now: datetime) -> str:
    """`prefix`, the creation time `now` (the row's created_at, to the microsecond) and 72 random bits, in hex:
    a list resumes after an id whose row has gone (margin.batches.store._position). Ids made before this
    (`prefix` and 24 random hex digits) carry no time."""
    return f"{prefix}{(now - EPOCH) // MICROSECOND:0{TIME_HEX}x}{secrets.token_hex(RANDOM_HEX // 2)}"


def id_time(object_id: str, prefix: str) -> datetime | None:
    """The creation time an id made by `new_id` carries; None for an id of another shape."""
    body = object_id.removeprefix(prefix)
    if body == object_id or len(body) != TIME_HEX + RANDOM_HEX or body.strip("0123456789abcdef"):
        return None
    return EPOCH + int(body[:TIME_HEX], 16) * MICROSECOND


def line_request_id(batch_id: str, line: int, attempt: int) -> str:
    """The ledger request id of one attempt of one line. A retry after a failure and a run after a crash are
    new attempts, each with its own id and ledger row: each may have cost money."""
    return hashlib.sha256(f"{batch_id}\n{line}\n{attempt}".encode()).hexdigest()[:32]


def findable(object_id: str) -> bool:
    """Whether an id a caller sent could name a stored object. None holds NUL, and PostgreSQL's text cannot
    hold one: a query with it failed in the driver (a 500) where an id that does not exist answers 404."""
    return "\x00" not in object_id


def no_file(file_id: str, param: str = "file_id") -> NotFound:
    return NotFound(f"No such File object: {file_id}", param=param)


def no_batch(batch_id: str) -> NotFound:
    return NotFound(f"No such Batch object: {batch_id}", param="batch_id")


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; margin writes UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Window:
    """One page of a list: at most `limit` objects after the id `after`, oldest first if `ascending`."""

    limit: int
    after: str | None = None
    ascending: bool = False


@dataclass(frozen=True, slots=True)
class Listing:
    """What one list reads: `table`'s `columns` of the rows `where` selects, the caller's being `mine`, and the
    prefix of its ids (`file-`, `batch_`)."""

    table: sa.Table
    columns: Sequence[Any]
    mine: sa.ColumnElement[bool]
    where: list[Any]
    prefix: str


@dataclass(frozen=True, slots=True)
class Owner:
    key_id: str | None
    org: str | None = None
    team: str | None = None


def _owned(table: sa.Table, owner: Owner) -> sa.ColumnElement[bool]:
    return quota.owned(table, owner.key_id)


async def _position(connection: AsyncConnection, listing: Listing, after: str) -> datetime:
    """Where the cursor `after` stands: its row's created_at if the caller has it (listed or not: expired, or of
    another purpose), else the time its id carries (a row deleted or swept since the page before: the next page
    goes on from where it was). Another key's id reads as one deleted: the caller's own rows after its time, none
    of that key's. An id that carries no time (made before margin put one in ids, or never made) answers 404."""
    table = listing.table
    if findable(after):
        query = sa.select(table.c.created_at).where(table.c.id == after, listing.mine)
        found = (await connection.execute(query)).first()
        if found is not None:
            return utc(found[0]) or EPOCH
    moment = id_time(after, listing.prefix)
    if moment is None:
        raise NotFound(f"no object {after!r} to page after", param="after")
    return moment


async def _page(connection: AsyncConnection, listing: Listing, window: Window) -> tuple[list[Any], bool]:
    """`window.limit` rows after the id `window.after`, newest first unless `window.ascending` (OpenAI's cursor
    pagination; `after` is always the last id of the page before, in the order asked for)."""
    created, ident = listing.table.c.created_at, listing.table.c.id
    where = [listing.mine, *listing.where]
    if window.after is not None:
        after, moment = window.after, await _position(connection, listing, window.after)
        if window.ascending:
            later = sa.or_(created > moment, sa.and_(created == moment, ident > after))
        else:
            later = sa.or_(created < moment, sa.and_(created == moment, ident < after))
        where.append(later)
    order = (created.asc(), ident.asc()) if window.ascending else (created.desc(), ident.desc())
    query = sa.select(*listing.columns).where(*where).order_by(*order).limit(window.limit + 1)
    rows = list((await connection.execute(query)).all())
    return rows[: window.limit], len(rows) > window.limit


# -- files


async def add_file(
    engine: AsyncEngine,
    owner: Owner,
    filename: str,
    content: bytes,
    lines: int,
    limit: int,
    now: datetime,
    expires_s: int | None = None,
) -> Any:
    """A new upload, expiring `expires_s` seconds after `now` (None: kept until deleted)."""
    async with engine.begin() as connection:
        await quota.lock(connection, owner.key_id)
        await quota.check(connection, owner.key_id, quota.ROW_BYTES + len(content), limit, now)
        file_id = new_id("file-", now)
        values = {
            "id": file_id,
            "key_id": owner.key_id,
            "org": owner.org,
            "purpose": "batch",
            "filename": filename,
            "bytes": len(content),
            "lines": lines,
            "content": content,
            "created_at": now,
            "expires_at": None if expires_s is None else now + timedelta(seconds=expires_s),
        }
        await connection.execute(batch_files.insert().values(**values))
        return (await connection.execute(sa.select(*FILE_COLUMNS).where(batch_files.c.id == file_id))).one()


async def get_file(engine: AsyncEngine, file_id: str, owner: Owner, now: datetime) -> Any:
    """The caller's file, unless it has expired at `now` (404 as a deleted one, swept or not yet)."""
    if not findable(file_id):
        raise no_file(file_id)
    async with engine.connect() as connection:
        where = (batch_files.c.id == file_id, _owned(batch_files, owner), expiry.live(now))
        query = sa.select(*FILE_COLUMNS).where(*where)
        row = (await connection.execute(query)).first()
    if row is None:
        raise no_file(file_id)
    return row


async def input_content(engine: AsyncEngine, file_id: str) -> bytes:
    """An uploaded file's bytes, for the worker that validates a job on it (whoever owns it; bounded by
    batches.max_file_bytes, so held whole); NotFound if it was deleted. One that has expired since the job was
    created is read all the same, as OpenAI's jobs go on: the sweep keeps it while a job waits to be validated on
    it (margin.batches.expiry.sweep), and a validated job has its own copy of its lines."""
    async with engine.connect() as connection:
        query = sa.select(batch_files.c.content).where(batch_files.c.id == file_id)
        content = await connection.scalar(query)
    if content is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return bytes(content)


async def list_files(
    engine: AsyncEngine, owner: Owner, window: Window, now: datetime, purpose: str | None = None
) -> tuple[list[Any], bool]:
    """The key's files not expired at `now`, only those of `purpose` if given (`batch`: uploads,
    `batch_output`: jobs' files)."""
    where = [expiry.live(now)]
    if purpose is not None:
        if not findable(purpose):  # no file has it (and PostgreSQL's text cannot hold it: a 500)
            return [], False
        where.append(batch_files.c.purpose == purpose)
    listing = Listing(batch_files, FILE_COLUMNS, _owned(batch_files, owner), where, "file-")
    async with engine.connect() as connection:
        return await _page(connection, listing, window)


async def file_chunks(engine: AsyncEngine, file_id: str) -> AsyncIterator[bytes]:
    """A file's bytes as it was written: an output file part by part (one query each, so a large one is never
    held whole), an upload as its one blob. The caller checked that the file is the caller's."""
    seq = 0
    while True:
        part = sa.and_(batch_file_parts.c.file_id == file_id, batch_file_parts.c.seq == seq)
        async with engine.connect() as connection:
            data = await connection.scalar(sa.select(batch_file_parts.c.data).where(part))
        if data is None:
            break
        yield bytes(data)
        seq += 1
    if seq == 0:
        async with engine.connect() as connection:
            content = await connection.scalar(sa.select(batch_files.c.content).where(batch_files.c.id == file_id))
        view = memoryview(content or b"")
        for start in range(0, len(view), UPLOAD_CHUNK):  # sent a chunk at a time: a client that does not read
            yield bytes(view[start : start + UPLOAD_CHUNK])  # holds one chunk in the server's buffer, not a copy


async def delete_file(engine: AsyncEngine, file_id: str, owner: Owner, now: datetime) -> None:
    """Delete the caller's file; one expired at `now` is deleted too (before the sweep would) but answers the
    404 of a file that does not exist, as every read of it does."""
    if not findable(file_id):
        raise no_file(file_id)
    mine = (batch_files.c.id == file_id, _owned(batch_files, owner))
    async with engine.begin() as connection:
        expires = (await connection.execute(sa.select(batch_files.c.expires_at).where(*mine))).first()
        gone = await connection.execute(batch_files.delete().where(*mine))
        if gone.rowcount == 1:
            await connection.execute(batch_file_parts.delete().where(batch_file_parts.c.file_id == file_id))
    moment = None if expires is None else utc(expires[0])
    if gone.rowcount != 1 or (moment is not None and moment <= now):
        raise no_file(file_id)


# -- jobs


async def add_batch(
    engine: AsyncEngine,
    owner: Owner,
    input_file_id: str,
    endpoint: str,
    window: tuple[str, int],
    meta: dict[str, str] | None,
    tags: dict[str, str],
    now: datetime,
    limits: BatchConfig,
    output_expires_s: int | None = None,
) -> Any:
    """A new job (validating), if the key has fewer than `max_active_jobs_per_key` unfinished and room in its
    quota for the job's row and a copy of its input's lines (what validation will store, checked exactly then).
    Its output and error files will expire `output_expires_s` after they are written (None: kept)."""
    batch_id = new_id("batch_", now)
    stored = quota.job_row_bytes(meta, tags)
    if not findable(input_file_id):
        raise no_file(input_file_id, "input_file_id")
    async with engine.begin() as connection:
        await quota.lock(connection, owner.key_id)  # first (margin.batches.quota.lock); the active count too
        source = (
            await connection.execute(
                sa.select(batch_files.c.purpose, batch_files.c.bytes).where(
                    batch_files.c.id == input_file_id, _owned(batch_files, owner), expiry.live(now)
                )
            )
        ).first()
        if source is None:
            raise no_file(input_file_id, "input_file_id")
        if source.purpose != "batch":  # a job's output or error file: it exists, but is no input
            raise InvalidRequest(
                f"the file {input_file_id} has purpose {source.purpose}; a job's input is a file uploaded with "
                "purpose batch",
                param="input_file_id",
                code="invalid_file_purpose",
            )
        await _admit(connection, owner, limits)
        await quota.check(connection, owner.key_id, stored + int(source.bytes), limits.max_stored_bytes_per_key, now)
        await connection.execute(
            batches.insert().values(
                id=batch_id,
                key_id=owner.key_id,
                org=owner.org,
                team=owner.team,
                input_file_id=input_file_id,
                endpoint=endpoint,
                completion_window=window[0],
                status="validating",
                tags=tags,
                meta=meta,
                created_at=now,
                expires_at=now + timedelta(hours=window[1]),
                stored_bytes=stored,
                output_expires_s=output_expires_s,
            )
        )
        return (await connection.execute(sa.select(batches).where(batches.c.id == batch_id))).one()


async def _admit(connection: AsyncConnection, owner: Owner, limits: BatchConfig) -> None:
    limit = limits.max_active_jobs_per_key
    active = await connection.scalar(
        sa.select(sa.func.count()).where(_owned(batches, owner), batches.c.status.in_(ACTIVE))
    )
    if int(active or 0) >= limit:
        raise RateLimited(
            f"this key has {limit} jobs not yet finished, the most batches.max_active_jobs_per_key allows; "
            "wait for one to end, or cancel one",
            code="too_many_active_batches",
        )


async def get_batch(engine: AsyncEngine, batch_id: str, owner: Owner | None) -> Any:
    if not findable(batch_id):
        raise no_batch(batch_id)
    where = [batches.c.id == batch_id]
    if owner is not None:
        where.append(_owned(batches, owner))
    async with engine.connect() as connection:
        row = (await connection.execute(sa.select(batches).where(*where))).first()
    if row is None:
        raise no_batch(batch_id)
    return row


async def list_batches(engine: AsyncEngine, owner: Owner, window: Window) -> tuple[list[Any], bool]:
    async with engine.connect() as connection:
        return await _page(connection, Listing(batches, list(batches.c), _owned(batches, owner), [], "batch_"), window)


def cancel_statement(batch_id: str, now: datetime, owner: Owner | None = None) -> sa.Update:
    where = [batches.c.id == batch_id, batches.c.status.in_(("validating", "in_progress"))]
    if owner is not None:
        where.append(_owned(batches, owner))
    return batches.update().where(*where).values(status="cancelling", cancelling_at=now)


async def cancel(engine: AsyncEngine, batch_id: str, owner: Owner, now: datetime) -> Any:
    """validating / in_progress → cancelling (the worker stops dispatching within `batches.poll_s`); a job
    already cancelling or cancelled is returned as it is; a finished one cannot be cancelled (409)."""
    if not findable(batch_id):
        raise no_batch(batch_id)
    async with engine.begin() as connection:
        await connection.execute(cancel_statement(batch_id, now, owner))
    row = await get_batch(engine, batch_id, owner)
    if row.status in ("completed", "failed", "expired", "finalizing"):
        raise Conflict(f"cannot cancel a batch whose status is {row.status}", code="batch_not_cancellable")
    return row


def counts_query(batch_id: str) -> sa.Select[Any]:
    """A job's lines by status, from its line rows (there while it runs: margin.batches.outputs.free)."""
    query = sa.select(batch_lines.c.status, sa.func.count()).where(batch_lines.c.batch_id == batch_id)
    return query.group_by(batch_lines.c.status)


async def line_counts(engine: AsyncEngine, row: Any) -> dict[str, int]:
    """A job's lines by status: kept on its row once it ended (its line rows are deleted then), else counted."""
    if row.line_counts is not None:
        return dict(row.line_counts)
    async with engine.connect() as connection:
        return {str(status): int(count) for status, count in await connection.execute(counts_query(row.id))}


def usage_json(used: Usage) -> dict[str, int]:
    """A job's token sums as `batches.usage` stores them (when it ended: margin.batches.progress.finalize)."""
    return {"input_tokens": used.input_tokens, "cached_tokens": used.cached_tokens, "output_tokens": used.output_tokens}


async def summed_usage(connection: AsyncConnection, batch_ids: Sequence[str]) -> dict[str, Usage]:
    """Each job's token sums from its ledger rows, every attempt of every line (one query on the ledger's
    batch_id index; zeros without rows)."""
    found: dict[str, Usage] = {batch_id: Usage() for batch_id in batch_ids}
    if not batch_ids:
        return found
    c = ledger.c
    query = (
        sa.select(c.batch_id, sa.func.sum(c.input_tokens), sa.func.sum(c.cached_tokens), sa.func.sum(c.output_tokens))
        .where(c.batch_id.in_(list(batch_ids)))
        .group_by(c.batch_id)
    )
    for row in (await connection.execute(query)).all():
        found[str(row[0])] = Usage(int(row[1] or 0), int(row[3] or 0), cached_tokens=int(row[2] or 0))
    return found


async def usage(engine: AsyncEngine, rows: Sequence[Any]) -> dict[str, Usage]:
    """Each job's Usage: as stored when it ended (margin.batches.progress.finalize), else (it runs, or ended
    before revision 0020) summed from its ledger rows now."""
    found = {row.id: Usage(**row.usage) for row in rows if row.usage is not None}
    missing = [row.id for row in rows if row.usage is None]
    if missing:
        async with engine.connect() as connection:
            found.update(await summed_usage(connection, missing))
    return found
