"""A job's output and error files, written when it ends, in the transaction that ends it.

Every input line is in exactly one of them, in line order: the output file holds the lines that got an
answer, the error file the lines refused at validation (`batch_errors`) and those that ended without one.
They are as large as the answers (a 447 KB input made 631 MiB of output), so neither is ever held whole:
the job's lines are read a page at a time and the files written in parts of up to `PART_BYTES`
(`batch_file_parts`), which the download streams back (margin.batches.store.file_chunks). Then the job's own
rows of its lines and refused lines are deleted (`free`): the files hold them, and count for the key; the job's
row keeps its lines' counts by status (`batches.line_counts`), all that is read of them after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from margin.batches.store import counts_query, line_request_id, new_id
from margin.ledger.models import batch_errors, batch_file_parts, batch_files, batch_lines

PART_BYTES = 1024 * 1024
PAGE_LINES = 64  # lines read at a time (each holds its answer's body)


def entry(batch_id: str, line: int, custom_id: str | None, response: Any, error: Any) -> bytes:
    """One line of an output or error file, as OpenAI writes it."""
    item = {"id": f"batch_req_{line_request_id(batch_id, line, 0)[:24]}", "custom_id": custom_id}
    return orjson.dumps({**item, "response": response, "error": error})


class FileWriter:
    """One file, written in parts of up to PART_BYTES as its lines come (in the caller's transaction)."""

    def __init__(self, connection: AsyncConnection, batch: Any, name: str, now: datetime) -> None:
        self.connection, self.batch, self.name, self.now = connection, batch, name, now
        self.id = new_id("file-", now)  # its created_at
        self.bytes = self.lines = self._seq = self._held = 0
        self._buffer: list[bytes] = []

    async def add(self, line: bytes) -> None:
        self._buffer.append(line + b"\n")
        self._held += len(line) + 1
        self.lines += 1
        if self._held >= PART_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer, self._held = [], 0
        await self.connection.execute(batch_file_parts.insert().values(file_id=self.id, seq=self._seq, data=data))
        self._seq += 1
        self.bytes += len(data)

    async def close(self) -> str | None:
        """The file's id (None if it holds no line: no file), created at the writer's `now`."""
        now = self.now
        await self._flush()
        if not self.lines:
            return None
        await self.connection.execute(
            batch_files.insert().values(
                id=self.id,
                key_id=self.batch.key_id,
                org=self.batch.org,
                purpose="batch_output",
                filename=f"{self.batch.id}_{self.name}.jsonl",
                bytes=self.bytes,
                lines=self.lines,
                content=b"",  # in batch_file_parts
                created_at=now,
                expires_at=expires_at(self.batch, now),
            )
        )
        return self.id


def expires_at(batch: Any, now: datetime) -> datetime | None:
    """When a job's output and error files written at `now` expire: its `output_expires_after` (None: kept)."""
    seconds = batch.output_expires_s
    return None if seconds is None else now + timedelta(seconds=seconds)


async def _paged(connection: AsyncConnection, table: sa.Table, batch_id: str) -> AsyncIterator[Any]:
    """The job's rows of `table` (batch_lines, batch_errors) in line order, PAGE_LINES at a time."""
    last = 0
    while True:
        query = (
            sa.select(table)
            .where(table.c.batch_id == batch_id, table.c.line > last)
            .order_by(table.c.line)
            .limit(PAGE_LINES)
        )
        page = list(await connection.execute(query))
        for row in page:
            yield row
        if len(page) < PAGE_LINES:
            return
        last = page[-1].line


async def write(connection: AsyncConnection, batch: Any, now: datetime) -> tuple[str | None, str | None]:
    """The job's (output file id, error file id); an id is None where that file would hold no line."""
    ok, bad = FileWriter(connection, batch, "output", now), FileWriter(connection, batch, "error", now)
    refused = _paged(connection, batch_errors, batch.id)  # at validation: not in batch_lines
    waiting = await anext(refused, None)
    async for row in _paged(connection, batch_lines, batch.id):
        response = None
        if row.status_code is not None:
            body = orjson.Fragment(row.response) if row.response else None
            response = {"status_code": row.status_code, "request_id": row.request_id, "body": body}
        line = entry(batch.id, row.line, row.custom_id, response, row.error)
        if row.status == "done":
            await ok.add(line)
            continue
        while waiting is not None and waiting.line < row.line:
            await bad.add(_refused(batch.id, waiting.error))
            waiting = await anext(refused, None)
        await bad.add(line)
    while waiting is not None:
        await bad.add(_refused(batch.id, waiting.error))
        waiting = await anext(refused, None)
    return await ok.close(), await bad.close()


async def free(connection: AsyncConnection, batch_id: str) -> dict[str, int]:
    """Once the files are written, delete the job's rows of what they hold (its lines' and refused lines'); its
    lines' counts by status, as they were deleted (what the job's row keeps: `batches.line_counts`)."""
    counts = {str(status): int(n) for status, n in await connection.execute(counts_query(batch_id))}
    await connection.execute(batch_errors.delete().where(batch_errors.c.batch_id == batch_id))
    await connection.execute(batch_lines.delete().where(batch_lines.c.batch_id == batch_id))
    return counts


def _refused(batch_id: str, error: dict[str, Any]) -> bytes:
    return entry(batch_id, error["line"], error["custom_id"], None, error)
