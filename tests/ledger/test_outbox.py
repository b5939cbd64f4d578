"""The ledger outbox in one process: rows appended to a file reach the ledger in batches, once each, with their
types; the file is deleted once ingested; an unreachable database keeps them (and, past the bound, makes the
outbox `full`); a write that fails raises instead of acknowledging."""

from __future__ import annotations

import asyncio
import errno
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from margin.ledger import db
from margin.ledger.batch import BatchSink, Cursor
from margin.ledger.models import ledger_dead_letter, ledger_hourly, outbox_offsets
from margin.ledger.outbox import Depth, IngestIn, Outbox, OutboxError, encode
from tests.helpers import disk_full, polls
from tests.ledger.rows import read_ledger, row


def files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def is_full(outbox: Outbox) -> bool:
    """`outbox.full` read through a call: mypy would keep the property narrowed across the appends that change it."""
    return outbox.full


@pytest.mark.parametrize("ingest_in", ["thread", "process"])
async def test_rows_reach_the_ledger_once_and_the_files_go(tmp_path: Path, ingest_in: IngestIn) -> None:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    db.upgrade(url)
    outbox = Outbox(url, tmp_path / "box", ingest_in=ingest_in, interval_s=60.0)  # only flushes move rows
    outbox.start()
    await outbox.flush()  # the minute counts from a pass: before the first one, a waiting row is already overdue
    for request_id in ("a", "b", "a"):  # a replayed settlement
        outbox.append(row(request_id))
    assert outbox.depth.rows == 3 and outbox.depth.bytes > 0
    assert await outbox.flush() == 3
    assert outbox.depth == Depth(0, 0)
    outbox.append(row("b"))
    outbox.append(row("b", kind="refund"))
    await outbox.flush()
    assert sorted((r.request_id, r.kind) for r in read_ledger(url)) == [
        ("a", "request"),
        ("b", "refund"),
        ("b", "request"),
    ]
    assert [r.requests for r in read_ledger(url, ledger_hourly)] == [2]  # the rollup counted each once
    await outbox.close()
    assert files(tmp_path / "box") == []  # file and lock removed: nothing left to recover
    assert read_ledger(url, outbox_offsets) == []


async def test_a_batch_waits_for_2_mb_or_the_interval(tmp_path: Path) -> None:
    """The ingester moves rows once 2 MB of them wait, or once the oldest has waited `interval_s` (a minute
    here, so only the size can start a batch): fewer, larger batches, since each has a fixed cost and its
    rows share the rollups' groups."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    db.upgrade(url)
    outbox = Outbox(url, tmp_path / "box", interval_s=60.0)
    outbox.start()
    await outbox.flush()  # a pass: the minute counts from here
    appended = 0
    for limit in (1_500_000, 2 * 1024 * 1024):
        while outbox.depth.bytes < limit:
            outbox.append(row(f"r{appended}"))
            appended += 1
        if limit < 2 * 1024 * 1024:
            await asyncio.sleep(0.5)  # the ingester looks every 50 ms
            assert outbox.depth.rows == appended and read_ledger(url) == []
    for _ in range(400):
        if outbox.depth.rows == 0:
            break
        await asyncio.sleep(0.05)
    assert outbox.depth.rows == 0 and len(read_ledger(url)) == appended > 1000
    await outbox.close()


async def test_rows_read_back_through_sqlalchemy_types(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    db.upgrade(url)
    outbox = Outbox(url, tmp_path / "box")
    outbox.start()
    when = datetime(2026, 11, 23, 12, 30, 5, 123456, tzinfo=UTC)
    outbox.append(row("typed", created_at=when, tags={"feature": "s\n\u00e9"}, stream=True, energy_j=1.5))
    outbox.append(row("whole-second", created_at=datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC), guard={"pii": 2}))
    await outbox.close()
    typed, whole = read_ledger(url)
    assert typed.created_at == when.replace(tzinfo=None)
    assert typed.tags == {"feature": "s\n\u00e9"} and typed.stream is True and typed.energy_j == 1.5
    assert typed.guard is None and typed.user is None
    assert whole.created_at == datetime(2026, 11, 23, 12, 0, 0) and whole.guard == {"pii": 2}
    engine = db.make_sync_engine(url)
    with engine.connect() as connection:  # stored as SQLAlchemy stores it, so text comparisons keep working
        stored = connection.exec_driver_sql("SELECT created_at FROM ledger ORDER BY id").scalars().all()
    engine.dispose()
    assert stored == ["2026-11-23 12:30:05.123456", "2026-11-23 12:00:00.000000"]


def test_one_line_per_row() -> None:
    line = encode(row("x", prompt_text="two\nlines", created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line)["created_at"] == "2026-01-02 03:04:05.000000+00:00"
    huge = encode(row("h", output_tokens=2**70))  # orjson stops at 64 bits: still one line, for the dead letter
    assert huge.count(b"\n") == 1 and str(2**70).encode() in huge


@pytest.mark.parametrize("ingest_in", ["thread", "process"])
async def test_an_unreachable_database_keeps_rows_and_fills_the_outbox(tmp_path: Path, ingest_in: IngestIn) -> None:
    url = f"sqlite:///{tmp_path / 'gone.db'}"  # not migrated: no table, as if the database were away
    outbox = Outbox(url, tmp_path / "box", max_rows=2, interval_s=0.01, ingest_in=ingest_in)
    outbox.start()
    outbox.append(row("a"))
    assert not outbox.full
    outbox.append(row("b"))
    assert await outbox.flush() == 0
    assert outbox.depth.rows == 2 and is_full(outbox)
    assert outbox.stats()["failed_flushes"] >= 1 and outbox.stats()["last_error"]
    db.upgrade(url)  # the database comes back
    # the pass this flush waits for, or a background one (every 10 ms here) just before it, moves both rows:
    # `flush() == 2` lost that race on a loaded CI box (the background pass won, the flush's moved 0)
    await outbox.flush()
    assert outbox.depth.rows == 0 and not outbox.full and outbox.stats()["written"] == 2
    await outbox.close()
    assert [r.request_id for r in read_ledger(url)] == ["a", "b"]


async def test_the_byte_bound_fills_the_outbox_too(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gone.db'}"
    outbox = Outbox(url, tmp_path / "box", max_bytes=2000)
    outbox.start()
    while not outbox.full:
        outbox.append(row(f"r{outbox.depth.rows}"))
    assert outbox.depth.bytes >= 2000 and outbox.depth.rows < 10  # ~300 bytes a row
    await outbox.close()  # the database never came: the rows stay for the next start
    assert any(name.endswith(".jsonl") for name in files(tmp_path / "box"))


async def test_files_rotate_and_each_is_deleted_once_ingested(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    db.upgrade(url)
    outbox = Outbox(url, tmp_path / "box", segment_bytes=4096, batch_bytes=64 * 1024, interval_s=60.0)
    outbox.start()
    await outbox.flush()  # only flushes move rows (the minute counts from this pass): the count below is exact
    written: list[str] = []
    while len([name for name in files(tmp_path / "box") if name.endswith(".jsonl")]) < 5:  # ~300 bytes a row
        written.append(f"r{len(written)}")
        outbox.append(row(written[-1]))
    written.append("last")
    outbox.append(row("last"))  # the fifth file holds a row
    assert await outbox.flush() == len(written)
    current = outbox._writer.current()
    assert current is not None and current[0] == f"{outbox.owner}.000004.jsonl"
    # the closed files were deleted (and their offsets); the one still written to stays
    assert [name for name in files(tmp_path / "box") if name.endswith(".jsonl")] == [current[0]]
    assert [r.segment for r in read_ledger(url, outbox_offsets)] == [current[0]]
    await outbox.close()
    assert sorted(r.request_id for r in read_ledger(url)) == sorted(written)
    assert files(tmp_path / "box") == []


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_null_columns_are_left_out_and_lines_with_them_read_the_same(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    """A line leaves out the columns that are null (shorter, and cheaper for the database to parse); lines
    written with explicit nulls (as before) are ingested the same, so an upgrade replays old files as they were."""
    url = f"sqlite:///{tmp_path / 'o.db'}" if database == "sqlite" else request.getfixturevalue("fresh_postgres")
    db.upgrade(url)
    when = datetime(2026, 11, 23, 12, 30, 5, 123456, tzinfo=UTC)
    sparse = encode(row("sparse", created_at=when, user="u", guard={"pii": None}))
    assert b"null" not in sparse.replace(b'{"pii":null}', b"")  # top-level nulls only: a JSON value keeps its own
    assert set(orjson.loads(sparse)) == {k for k, v in row("x", user="u", guard={}).items() if v is not None}
    full = row("explicit", created_at=when, user="u", guard={"pii": None})
    explicit = orjson.dumps({**full, **orjson.loads(encode(full))})  # every column, nulls written out
    assert explicit.count(b":null") > 15
    sink = BatchSink(url)
    sink.move(Cursor("s"), sparse + explicit + b"\n", 2)
    sink.close()
    by_id = {r.request_id: r._asdict() for r in read_ledger(url)}
    sparse_row, explicit_row = by_id.pop("sparse"), by_id.pop("explicit")
    for name in ("id", "request_id"):
        del sparse_row[name], explicit_row[name]
    assert sparse_row == explicit_row and sparse_row["user"] == "u" and sparse_row["guard"] == {"pii": None}
    assert sparse_row["org"] is None and sparse_row["error_code"] is None


async def test_the_offset_is_committed_with_each_batch(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    db.upgrade(url)
    outbox = Outbox(url, tmp_path / "box")
    outbox.start()
    lines = [encode(row(f"r{n}")) for n in range(3)]
    for n in range(3):
        outbox.append(row(f"r{n}"))
    await outbox.flush()
    (offset,) = read_ledger(url, outbox_offsets)
    assert offset.segment == f"{outbox.owner}.000000.jsonl" and offset.rows == 3
    assert offset.byte_offset == sum(len(line) for line in lines) == outbox.stats()["appended_bytes"]
    await outbox.close()


async def test_a_failed_write_is_not_acknowledged(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    db.upgrade(url)
    outbox = Outbox(url, tmp_path / "box")
    outbox.start()
    outbox.append(row("ok"))
    outbox._writer.os_write = disk_full
    with pytest.raises(OutboxError) as refused:
        outbox.append(row("lost"))
    assert refused.value.code == "ledger_unavailable" and outbox.write_errors == 1
    outbox._writer.os_write = os.write
    await outbox.close()
    with pytest.raises(OutboxError):
        outbox.append(row("after-close"))
    assert [r.request_id for r in read_ledger(url)] == ["ok"]


async def test_a_row_cut_short_by_a_full_disk_leaves_nothing_for_the_next_rows_to_join(tmp_path: Path) -> None:
    """A full disk takes part of a line, then refuses the rest: that request is refused (503), and the part is
    cut off again. Once space is back, the next rows follow the last whole line: none is glued to the fragment
    (a dead letter) or read past the size the writer counted (dropped as a torn last row)."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    db.upgrade(url)
    outbox = Outbox(url, tmp_path / "box", ingest_in="thread")
    outbox.start()
    outbox.append(row("a"))
    written: list[int] = []

    def half_then_full(fd: int, data: Any) -> int:
        if written:
            return disk_full(fd, data)
        written.append(os.write(fd, bytes(data[: len(data) // 2])))
        return written[-1]

    outbox._writer.os_write = half_then_full
    with pytest.raises(OutboxError):
        outbox.append(row("torn"))
    outbox._writer.os_write = os.write  # space is back
    for name in ("b", "c"):
        outbox.append(row(name))
    await outbox.close()
    assert sorted(r.request_id for r in read_ledger(url)) == ["a", "b", "c"]
    assert read_ledger(url, ledger_dead_letter) == [] and outbox._ingester.stats.torn_bytes == 0


async def test_a_file_that_could_not_be_started_is_tried_again(tmp_path: Path) -> None:
    """The row that filled a file is written; the next file cannot be created (no inodes): that row is still
    acknowledged, the next is refused, and once files can be created again rows are taken (never "closed")."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    db.upgrade(url)
    outbox = Outbox(url, tmp_path / "box", segment_bytes=64, ingest_in="thread")  # a file a row
    outbox.start()

    def no_inodes(path: Any, flags: int, mode: int = 0o777, **_: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    outbox._writer.os_open = no_inodes
    outbox.append(row("filled-it"))
    with pytest.raises(OutboxError):
        outbox.append(row("refused"))
    assert not is_full(outbox) and outbox.write_errors == 1
    outbox._writer.os_open = os.open
    outbox.append(row("after"))
    await outbox.close()
    assert sorted(r.request_id for r in read_ledger(url)) == ["after", "filled-it"]


async def test_flush_and_close_before_start_do_nothing(tmp_path: Path) -> None:
    outbox = Outbox(f"sqlite:///{tmp_path / 'o.db'}", tmp_path / "box")
    assert await outbox.flush() == 0
    await outbox.close()
    assert not (tmp_path / "box").exists()


def test_the_directory_defaults_beside_a_sqlite_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Outbox(f"sqlite:///{tmp_path / 'l.db'}").directory == tmp_path / "l.db.outbox"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    first = Outbox("postgresql://u:secret@h/a").directory
    assert first.parent == tmp_path / "state" / "margin" and first.name.startswith("outbox-")
    assert Outbox("postgresql://u:other@h/a").directory == first  # the password is no part of the name
    assert Outbox("postgresql://u@h/b").directory != first


@pytest.mark.parametrize("policy", ["interval", "always"])
async def test_fsync_policies_leave_nothing_unsynced(tmp_path: Path, policy: str) -> None:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    db.upgrade(url)
    # `interval`: the ingester's first sync comes 1 s after its start, so the check right after the append cannot
    # find it synced already (with 10 ms, a stall there let the thread sync first)
    outbox = Outbox(url, tmp_path / "box", fsync=policy, fsync_interval_s=1.0)  # type: ignore[arg-type]
    outbox.start()
    outbox.append(row("a"))
    assert outbox._writer._dirty is (policy == "interval")  # `always` synced inside append
    for _ in polls():  # `interval`: the ingester's thread syncs within the interval
        await outbox.flush()
        if not outbox._writer._dirty:
            break
        await asyncio.sleep(0.05)
    assert not outbox._writer._dirty
    await outbox.close()
    assert [r.request_id for r in read_ledger(url)] == ["a"]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_line_no_coerced_copy_can_save_is_a_dead_letter_not_salvaged(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    """A line without a request_id: refused whole, and its coerced copy is refused too. `_salvage`'s savepoint
    rolls back over ingest's own append savepoint, which the failed INSERT left open (SQLAlchemy warns:
    "nested transaction already deassociated from connection", an error under pytest's filterwarnings)."""
    url = f"sqlite:///{tmp_path / 'o.db'}" if database == "sqlite" else request.getfixturevalue("fresh_postgres")
    db.upgrade(url)
    when = datetime(2026, 11, 23, 12, 30, 5, 123456, tzinfo=UTC)
    anonymous = orjson.loads(encode(row("c", created_at=when)))
    del anonymous["request_id"]
    sink = BatchSink(url)
    cursor = Cursor("s")
    sink.move_each(cursor, encode(row("a", created_at=when)) + orjson.dumps(anonymous) + b"\n")
    sink.close()
    assert (cursor.rows, cursor.inserted, cursor.dead_letters) == (2, 1, 1)
    assert [r.request_id for r in read_ledger(url)] == ["a"]


@pytest.mark.parametrize("ingest_in", ["thread", "process"])
async def test_a_flush_given_up_on_leaves_the_ingester_running(tmp_path: Path, ingest_in: IngestIn) -> None:
    """A flush awaited under a timeout (a new budget counter's, 10 s) or by a client that left is cancelled; the
    pass it asked for then resolved a cancelled future, which raised, ended the ingest thread, and no row reached
    the ledger after it (the next flush never returned)."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    db.upgrade(url)
    outbox = Outbox(url, tmp_path / "box", ingest_in=ingest_in, interval_s=60.0)  # only flushes move rows
    outbox.start()
    try:
        outbox.append(row("a"))
        given_up = asyncio.ensure_future(outbox.flush_ok())
        await asyncio.sleep(0)
        given_up.cancel()  # as `asyncio.wait_for` does at its timeout
        outbox.append(row("b"))
        assert await asyncio.wait_for(outbox.flush_ok(), 20)
        await asyncio.wait_for(outbox.flush(), 20)  # a pass after the one given up on
        assert sorted(r.request_id for r in read_ledger(url)) == ["a", "b"]
    finally:
        await asyncio.wait_for(outbox.close(), 30)  # before: it waited forever on the dead thread's passes
