"""The worker's side of the job tables: leases, validation results, each line's attempts, and the final
output and error files. Each step is one transaction guarded by the state it expects, so nothing a
restart replays is done twice and nothing a crash interrupts is half done."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from margin.batches import outputs, quota
from margin.batches.jsonl import Line, LineError
from margin.batches.store import ACTIVE, FINAL, LINE_OPEN, line_request_id, summed_usage, usage_json, utc
from margin.ledger.models import batch_errors, batch_lines, batches
from margin.types import Usage

EXPIRED = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}
CANCELLED = {"code": "batch_cancelled", "message": "This request was not executed: the batch was cancelled."}
SHOWN_ERRORS = 100  # validation errors the job object lists (`errors.data`); its error file has every one
DEFERRAL = 1 << 16
"""A line's `attempts` counts every start (each its own request id: `line_request_id(job, line, attempts)`),
packed: the starts margin's own rate limiter refused (`deferrals`: each adds DEFERRAL - 1 when it lands) in its
high part, the tries that count toward `batches.max_attempts` (`tries`: below DEFERRAL) in its low part. Every
start takes a number above the last, so no two attempts of a line share a request id (no migration: the
column keeps its type)."""
SETTLE_PAGE = 100  # ended jobs whose line rows are deleted at a time (settle_finished)
MAX_DEFERRALS = 10_000  # refusals of one line waited out; past it one counts as a try (2**31 / DEFERRAL > it)


def tries(attempts: int) -> int:
    """The attempts that count toward `batches.max_attempts` (the limiter's refusals are not among them)."""
    return attempts % DEFERRAL


def deferrals(attempts: int) -> int:
    """How many of a line's starts margin's own rate limiter refused (each waited out, not a try)."""
    return attempts // DEFERRAL


async def claim(engine: AsyncEngine, worker: str, now: datetime, lease_s: float) -> list[str]:
    """Take (or renew) the lease of every active job no live worker holds; the ids this worker now holds."""
    until = now + timedelta(seconds=lease_s)
    free = sa.or_(batches.c.lease_owner.is_(None), batches.c.lease_until < now, batches.c.lease_owner == worker)
    async with engine.begin() as connection:
        ids = (await connection.execute(sa.select(batches.c.id).where(batches.c.status.in_(ACTIVE), free))).scalars()
        held = []
        for batch_id in list(ids):
            taken = await connection.execute(
                batches.update()
                .where(batches.c.id == batch_id, batches.c.status.in_(ACTIVE), free)
                .values(lease_owner=worker, lease_until=until)
            )
            if taken.rowcount == 1:
                held.append(batch_id)
        return held


async def release(engine: AsyncEngine, worker: str) -> None:
    """A worker that stops gives its leases back, so that the next one (a restart) resumes its jobs at once."""
    async with engine.begin() as connection:
        await connection.execute(
            batches.update().where(batches.c.lease_owner == worker).values(lease_owner=None, lease_until=None)
        )


async def save_validation(
    engine: AsyncEngine,
    batch_id: str,
    lines: Sequence[Line],
    errors: Sequence[LineError],
    plan: dict[str, Any] | None,
    now: datetime,
    limit: int,
) -> bool:
    """validating → in_progress with the lines stored; False if the job left `validating` meanwhile, if its
    lines and refused lines would take its key past `limit` (batches.max_stored_bytes_per_key): it then ends
    `failed` with a `storage_quota_exceeded` error and stores none of them, or if no line is valid: it then
    ends `failed` at once, its error file written (`_nothing_valid`)."""
    shown = [e.to_json() for e in errors[:SHOWN_ERRORS]]
    refused: list[dict[str, Any]] = [{"batch_id": batch_id, "line": e.line, "error": e.to_json()} for e in errors]
    working = quota.lines_bytes(((line.custom_id, len(line.body)) for line in lines), (r["error"] for r in refused))
    async with engine.connect() as connection:  # a job's key never changes: read before the locked transaction
        key_id = await connection.scalar(sa.select(batches.c.key_id).where(batches.c.id == batch_id))
    async with engine.begin() as connection:
        await quota.lock(connection, key_id)
        batch = (await connection.execute(sa.select(batches).where(batches.c.id == batch_id))).one()
        if batch.status != "validating":
            return False
        stored = quota.job_row_bytes(batch.meta, batch.tags, shown, plan) + working
        if await quota.used(connection, batch.key_id, now) - batch.stored_bytes + stored > limit:
            await _over_quota(connection, batch, now, limit)
            return False
        if not lines:
            await _nothing_valid(connection, batch, refused, shown, now)
            return False
        moved = await connection.execute(
            batches.update()
            .where(batches.c.id == batch_id, batches.c.status == "validating")
            .values(
                status="in_progress",
                in_progress_at=now,
                model=lines[0].model if lines else None,
                errors=shown,
                plan=plan,
                total=len(lines) + len(errors),
                failed=len(errors),
                stored_bytes=stored,
            )
        )
        if moved.rowcount != 1:
            return False
        if refused:
            await connection.execute(batch_errors.insert(), refused)
        if lines:
            await connection.execute(batch_lines.insert(), [_line_row(batch_id, line) for line in lines])
    return True


async def _nothing_valid(
    connection: AsyncConnection, batch: Any, refused: list[dict[str, Any]], shown: list[Any], now: datetime
) -> None:
    """validating → failed, as OpenAI ends a job that fails validation (never in_progress nor finalizing): no
    line is valid. Its error file (every refused line) is written in the same transaction."""
    if refused:
        await connection.execute(batch_errors.insert(), refused)
    _, error_file = await outputs.write(connection, batch, now)
    await outputs.free(connection, batch.id)  # its refused lines' rows (it has no line row)
    counts = {"total": len(refused), "failed": len(refused), "error_file_id": error_file}
    await _failed_validating(connection, batch, now, shown, usage=usage_json(Usage()), **counts)  # no line ran


def _line_row(batch_id: str, line: Line) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "line": line.line,
        "custom_id": line.custom_id,
        "body": line.body.decode(),
        "status": "pending",
        "attempts": 0,
    }


async def _over_quota(connection: AsyncConnection, batch: Any, now: datetime, limit: int) -> None:
    """validating → failed, none of its lines stored: they would take its key past its quota."""
    refusal = quota.refusal(limit)
    await _unvalidated(connection, batch, now, quota.CODE, refusal.message)


async def input_missing(engine: AsyncEngine, batch_id: str, now: datetime) -> None:
    """validating → failed: its input file was deleted before the job was validated (one that expired is kept
    for it: margin.batches.expiry)."""
    async with engine.begin() as connection:
        batch = (await connection.execute(sa.select(batches).where(batches.c.id == batch_id))).one()
        message = f"the input file {batch.input_file_id} was deleted before the job was validated"
        await _unvalidated(connection, batch, now, "input_file_missing", message)


async def _unvalidated(connection: AsyncConnection, batch: Any, now: datetime, code: str, message: str) -> None:
    """validating → failed with one error of the whole job (no line), nothing stored."""
    error = {"line": None, "custom_id": None, "code": code, "message": message, "param": None}
    await _failed_validating(connection, batch, now, [error])


async def _failed_validating(
    connection: AsyncConnection, batch: Any, now: datetime, errors: list[Any], **values: Any
) -> None:
    """validating → failed (never in_progress nor finalizing), `errors` shown on the job, its lease let go, no
    line row (`line_counts` empty); `values`: other columns (counts, the error file, usage)."""
    await connection.execute(
        batches.update()
        .where(batches.c.id == batch.id, batches.c.status == "validating")
        .values(
            status="failed",
            failed_at=now,
            errors=errors,
            stored_bytes=quota.job_row_bytes(batch.meta, batch.tags, errors),
            line_counts={},
            lease_owner=None,
            lease_until=None,
            **values,
        )
    )


async def reset_running(engine: AsyncEngine, batch_id: str, max_attempts: int, now: datetime) -> int:
    """Lines a dead (or stopped) worker left running go back to pending, to run again as their next attempt,
    under a new request id. The attempt left running may have reached the upstream, been paid for and have its
    ledger row: run again under the same id, the second call would find that id settled (no budget check) and
    its row would be dropped as a duplicate, a call paid and recorded nowhere. A line whose cut attempt was its
    `max_attempts`-th fails instead (a line that stops the gateway each time it runs is not run, and paid
    for, on every restart); how many went back to pending."""
    running = (batch_lines.c.batch_id == batch_id, batch_lines.c.status == "running")
    error = {
        "code": "attempts_exhausted",
        "message": f"the gateway stopped during this line's last attempt ({max_attempts} of batches.max_attempts)",
    }
    async with engine.begin() as connection:
        spent = await connection.execute(
            batch_lines.update()
            .where(*running, batch_lines.c.attempts % DEFERRAL >= max_attempts)
            .values(status="failed", status_code=None, response=None, error=error, finished_at=now)
        )
        if spent.rowcount:
            await connection.execute(
                batches.update()
                .where(batches.c.id == batch_id)
                .values(
                    failed=batches.c.failed + spent.rowcount,
                    stored_bytes=batches.c.stored_bytes + spent.rowcount * quota.size(error),
                )
            )
        reset = await connection.execute(batch_lines.update().where(*running).values(status="pending"))
        return int(reset.rowcount)


async def pending_lines(engine: AsyncEngine, batch_id: str, now: datetime, limit: int, skip: set[int]) -> list[Any]:
    ready = sa.or_(batch_lines.c.not_before.is_(None), batch_lines.c.not_before <= now)
    query = (
        sa.select(batch_lines.c.line, batch_lines.c.body, batch_lines.c.attempts)
        .where(batch_lines.c.batch_id == batch_id, batch_lines.c.status == "pending", ready)
        .order_by(batch_lines.c.line)
        .limit(limit + len(skip))
    )
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    return [row for row in rows if row.line not in skip][:limit]


async def open_lines(engine: AsyncEngine, batch_id: str) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            sa.select(sa.func.count()).where(batch_lines.c.batch_id == batch_id, batch_lines.c.status.in_(LINE_OPEN))
        )
    return int(count or 0)


def holds(batch: Any, worker: str, now: datetime) -> bool:
    """Whether `worker` still holds the job's lease at `now` (renewed in time, and not taken by another worker
    after a renewal failed)."""
    until = utc(batch.lease_until)
    return bool(batch.lease_owner == worker and until is not None and until > now)


async def start_lines(
    engine: AsyncEngine, batch_id: str, lines: Sequence[tuple[int, int]], worker: str, now: datetime
) -> dict[int, str]:
    """pending → running for each (line, attempt), in one transaction, while `worker` holds the job's lease at
    `now`; the request id of each line started (a line another run took meanwhile is left out; none once the
    lease is lost: another worker may run the job now)."""
    started: dict[int, str] = {}
    leased = (batches.c.id == batch_id, batches.c.lease_owner == worker, batches.c.lease_until > now)
    async with engine.begin() as connection:
        if await connection.scalar(sa.select(sa.func.count()).where(*leased)) != 1:
            return started
        for line, attempt in lines:
            request_id = line_request_id(batch_id, line, attempt)
            moved = await connection.execute(
                batch_lines.update()
                .where(
                    batch_lines.c.batch_id == batch_id,
                    batch_lines.c.line == line,
                    batch_lines.c.status == "pending",
                    batch_lines.c.attempts == attempt - 1,
                )
                .values(status="running", attempts=attempt, request_id=request_id)
            )
            if moved.rowcount == 1:
                started[line] = request_id
    return started


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # done | failed | pending (retry later)
    status_code: int | None
    response: bytes | None
    error: dict[str, Any] | None = None
    not_before: datetime | None = None
    deferred: bool = False  # margin's own rate limiter refused it: pending again, not a try (DEFERRAL)


async def finish_lines(
    engine: AsyncEngine, batch_id: str, outcomes: Sequence[tuple[int, int, Outcome]], now: datetime
) -> int:
    """Record each (line, attempt, outcome) once (the line must still be running that attempt), with the
    job's counters and the bytes of the answers it now stores (a retried line's earlier answer stays counted
    until the job ends), in one transaction; how many were recorded."""
    counts = {"done": 0, "failed": 0}
    answers = 0
    async with engine.begin() as connection:
        for line, attempt, outcome in outcomes:
            done = await connection.execute(
                batch_lines.update()
                .where(
                    batch_lines.c.batch_id == batch_id,
                    batch_lines.c.line == line,
                    batch_lines.c.status == "running",
                    batch_lines.c.attempts == attempt,
                )
                .values(
                    status=outcome.status,
                    status_code=outcome.status_code,
                    response=None if outcome.response is None else outcome.response.decode("utf-8", "replace"),
                    error=outcome.error,
                    not_before=outcome.not_before,
                    finished_at=None if outcome.status == "pending" else now,
                    attempts=batch_lines.c.attempts + (DEFERRAL - 1 if outcome.deferred else 0),
                )
            )
            if done.rowcount == 1:
                answers += len(outcome.response or b"") + quota.size(outcome.error)
                counts[outcome.status] = counts.get(outcome.status, 0) + 1
        if answers or counts["done"] or counts["failed"]:
            await connection.execute(
                batches.update()
                .where(batches.c.id == batch_id)
                .values(
                    completed=batches.c.completed + counts["done"],
                    failed=batches.c.failed + counts["failed"],
                    stored_bytes=batches.c.stored_bytes + answers,
                )
            )
    return counts["done"] + counts["failed"]


async def close_pending(engine: AsyncEngine, batch_id: str, status: str, now: datetime) -> int:
    """Pending lines of an expired (or cancelled) job end as `status`, counted as failed."""
    error = EXPIRED if status == "expired" else CANCELLED
    async with engine.begin() as connection:
        closed = await connection.execute(
            batch_lines.update()
            .where(batch_lines.c.batch_id == batch_id, batch_lines.c.status == "pending")
            .values(status=status, error=error, finished_at=now)
        )
        if closed.rowcount:
            await connection.execute(
                batches.update().where(batches.c.id == batch_id).values(failed=batches.c.failed + closed.rowcount)
            )
        return int(closed.rowcount)


async def finalize(engine: AsyncEngine, batch_id: str, status: str, now: datetime) -> bool:
    """Write the output and error files (margin.batches.outputs), delete the job's line rows and refused lines'
    rows (the files hold them), and write the final status, its lines' counts by status (`line_counts`: retrieve
    reads them from then on) and what the job still stores (its row alone), in one transaction: a crash midway
    leaves the job as it was, to be finalized again. Once: the job must still be active and have no line pending
    or running (one would be lost), else nothing is written and False returned. Every input line is in exactly
    one of the two files."""
    try:
        async with engine.begin() as connection:
            batch = (await connection.execute(sa.select(batches).where(batches.c.id == batch_id))).one()
            if batch.status not in ACTIVE:
                return False
            output, error = await outputs.write(connection, batch, now)
            counts = await outputs.free(connection, batch_id)
            if any(counts.get(open_status) for open_status in LINE_OPEN):
                raise _Moved()  # a line started again meanwhile (another worker): not over yet
            used = (await summed_usage(connection, [batch_id]))[batch_id]  # its rows are in (runner._durable)
            values: dict[str, Any] = {
                "usage": usage_json(used),
                "status": status,
                "finalizing_at": now,
                f"{status}_at": now,
                "output_file_id": output,
                "error_file_id": error,
                "lease_owner": None,
                "lease_until": None,
                "line_counts": counts,
                "stored_bytes": quota.job_row_bytes(batch.meta, batch.tags, batch.errors, batch.plan),
            }
            moved = await connection.execute(
                batches.update().where(batches.c.id == batch_id, batches.c.status == batch.status).values(**values)
            )
            if moved.rowcount != 1:  # another worker or a cancel changed it meanwhile: no orphan files
                raise _Moved()
    except _Moved:
        return False
    return True


def unsettled(limit: int) -> sa.Select[Any]:
    """Up to `limit` ended jobs without their lines' counts: read through the partial index on
    `line_counts IS NULL` (0030), never the ended jobs already settled. A job whose counts are on its row has no
    line row: the counts are written in the transaction that deletes its lines (`finalize`, `settle_finished`,
    0029), and a job failed in validation gets none."""
    ended = (batches.c.status.in_(FINAL), batches.c.line_counts.is_(None))
    return sa.select(batches.c.id).where(*ended).limit(limit)


async def settle_finished(engine: AsyncEngine, limit: int = SETTLE_PAGE) -> int:
    """Up to `limit` jobs that ended without their lines' counts (finalized by a release before 0029, as a replica
    not yet upgraded does): their counts by status onto their rows (once), their line rows deleted and what they
    store set to their row's; how many. Each job in its own transaction, guarded by its end and its missing
    counts: workers that settle at once change each once."""
    async with engine.connect() as connection:
        ids = list((await connection.execute(unsettled(limit))).scalars())
    for batch_id in ids:
        async with engine.begin() as connection:
            job = (await connection.execute(sa.select(batches).where(batches.c.id == batch_id))).first()
            if job is None:  # expired and deleted since the look: nothing to settle (the rest of the page still is)
                continue
            if job.status not in FINAL or job.line_counts is not None:  # another worker settled it meanwhile
                continue
            counts = await outputs.free(connection, batch_id)  # an ended job's lines change no more
            unsettled_job = (batches.c.id == batch_id, batches.c.status.in_(FINAL), batches.c.line_counts.is_(None))
            stored = quota.job_row_bytes(job.meta, job.tags, job.errors, job.plan)
            await connection.execute(
                batches.update().where(*unsettled_job).values(line_counts=counts, stored_bytes=stored)
            )
    return len(ids)


class _Moved(Exception):
    """The job's status changed while its files were written: the transaction is rolled back."""
