"""The stager (margin.ledger.stager): a batch staged while the one before it is appended gives the ledger and
every rollup what the serial way gives; a replay, a duplicate, a change of the rolled-up tag keys, damaged bytes
or an out-of-range integer in the batch staged ahead go the one-core way (or are refused) without harm to the
batch being appended, and so does a retry after the database failed; the ingester hands each batch the next
one's lines, across files too; without a stager the sink stages each batch itself; the WAL stays small over a
backlog."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from margin.config import StorageConfig
from margin.ledger import db, rollup
from margin.ledger.batch import BatchSink, Cursor, RowsRefused
from margin.ledger.outbox import Outbox, encode
from margin.ledger.segments import segment_name
from margin.ledger.sink_process import RemoteSink
from margin.ledger.stager import Stager
from tests.ledger.rows import read_ledger, row
from tests.ledger.test_ingester import dead_file
from tests.ledger.test_sink_process import sent_lines
from tests.ledger.varied import assert_equals_a_rebuild, batches, varied_rows


@pytest.fixture
def engine(url: str) -> Iterator[sa.Engine]:
    engine = db.make_sync_engine(url)
    with engine.begin() as connection:
        rollup.rebuild(connection, ("feature", "customer", "task_id"))
    yield engine
    engine.dispose()


def lines(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(encode(r) for r in rows)


def move_all(sink: BatchSink, parts: list[bytes], cursor: Cursor) -> None:
    """As the ingester moves a backlog: each batch with the next one's lines."""
    for i, part in enumerate(parts):
        sink.move(cursor, part, part.count(b"\n"), parts[i + 1] if i + 1 < len(parts) else b"")


def parsed_here(sink: BatchSink) -> list[str]:
    """The statements that parse JSON on the ledger's connections (the stager parses on its own)."""
    found: list[str] = []

    @sa.event.listens_for(sink._engine, "before_cursor_execute")
    def _seen(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "json_each" in statement:
            found.append(statement)

    return found


def stager(sink: BatchSink) -> Any:
    assert sink._stager is not None  # a SQLite file: the sink stages
    return sink._stager


def test_batches_staged_ahead_equal_a_rebuild(url: str, engine: sa.Engine) -> None:
    """Varied rows (NULL dimensions, tasks across batches out of order, refunds, three tag keys) in uneven
    batches, each staged while the one before it was appended: every rollup holds a rebuild's integers."""
    rows = varied_rows(1500)
    parts = [lines(part) for part in batches(rows)]
    sink, cursor = BatchSink(url), Cursor("s")
    move_all(sink, parts, cursor)
    assert sink.pipelined == len(parts) and stager(sink).ready == len(parts) - 1
    sink.close()
    assert cursor.inserted == len(rows) == len(read_ledger(url))
    assert_equals_a_rebuild(engine)


def test_replays_and_duplicates_are_appended_from_the_stagers_copy(url: str, engine: sa.Engine) -> None:
    rows = varied_rows(300, seed=3)
    first, second, third = lines(rows[:100]), lines(rows[100:200]), lines(rows[200:])
    doubled = second + lines(rows[150:151])  # a row twice in one batch
    sink, cursor = BatchSink(url), Cursor("s")
    parsed = parsed_here(sink)
    move_all(sink, [first, first, doubled, third, third], cursor)  # a replayed batch, twice
    sink.close()
    assert cursor.inserted == 300 and sink.pipelined == 2  # first and third; the other three went serially
    assert parsed == []  # from the stager's copy, not parsed again
    assert sorted(r.request_id for r in read_ledger(url)) == sorted(r["request_id"] for r in rows)
    assert_equals_a_rebuild(engine)


def test_other_tag_keys_between_staging_and_appending(url: str, engine: sa.Engine) -> None:
    """`margin db rebuild-rollups` with other keys while a batch waits, staged with the old ones."""
    parts = [lines(part) for part in batches(varied_rows(400, seed=8))]
    sink, cursor = BatchSink(url), Cursor("s")
    parsed = parsed_here(sink)
    sink.move(cursor, parts[0], parts[0].count(b"\n"), parts[1])
    with engine.begin() as connection:
        rollup.rebuild(connection, ("feature",))
    move_all(sink, parts[1:], cursor)
    sink.close()
    assert sink.pipelined == len(parts) - 1 and parsed == []  # all but the one staged with the old keys
    assert_equals_a_rebuild(engine)


def test_a_bad_batch_ahead_leaves_the_batch_before_it_whole(url: str, engine: sa.Engine) -> None:
    """Damaged bytes or an integer beyond 64 bits, staged ahead: the batch appended meanwhile commits; the bad
    one is then refused (and moved line by line by the ingester), as without a stager."""
    huge_line = json.dumps({**orjson.loads(encode(row("huge"))), "input_tokens": 10**25}).encode()
    good = [lines([row(f"g{n}")]) for n in range(3)]
    sink, cursor = BatchSink(url), Cursor("s")
    parsed = parsed_here(sink)
    for part, bad, column in ((good[0], b"\x00garbage\xff\n", None), (good[1], huge_line + b"\n", "input_tokens")):
        sink.move(cursor, part, 1, bad)
        with pytest.raises(RowsRefused) as refused:
            sink.move(cursor, bad, 1, good[2])
        assert column is None or str(refused.value).startswith(column)
    sink.move(cursor, good[2], 1)
    sink.close()
    assert sorted(r.request_id for r in read_ledger(url)) == ["g0", "g1", "g2"]
    assert cursor.offset == sum(map(len, good))  # the refused batches moved nothing, not even the offset
    assert len(parsed) == 1  # the damaged bytes, parsed again here for the database's own error


def test_a_batch_retried_after_a_transient_failure_counts_once(url: str, engine: sa.Engine) -> None:
    """The database fails half-way through a staged batch's rollups (busy): nothing of it stays; the retry
    takes the same staged batch and counts it once."""
    parts = [lines(part) for part in batches(varied_rows(500, seed=6))]
    sink, cursor = BatchSink(url), Cursor("s")
    failing = {"armed": True}

    @sa.event.listens_for(sink._engine, "before_cursor_execute")
    def _busy_once(connection: Any, cursor_: Any, statement: str, *args: Any) -> None:
        if failing["armed"] and statement.startswith("INSERT INTO ledger_daily"):
            failing["armed"] = False
            raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sa.exc.OperationalError):
        sink.move(cursor, parts[0], parts[0].count(b"\n"), parts[1])
    assert (cursor.offset, cursor.inserted) == (0, 0)
    move_all(sink, parts, cursor)
    assert stager(sink).ready == len(parts)  # the retry, and every batch after it, found staged
    sink.close()
    assert cursor.inserted == 500 == len(read_ledger(url))
    assert_equals_a_rebuild(engine)


def test_without_a_stager_the_sink_stages_each_batch_itself(url: str, engine: sa.Engine, monkeypatch: Any) -> None:
    """A SQLite whose ATTACH does not read URIs (or has no in-memory VFS): one core, the same rows and rollups."""

    def refuse() -> None:
        raise sqlite3.NotSupportedError("this SQLite does not read URIs in ATTACH")

    monkeypatch.setattr(Stager, "_check_uris", staticmethod(refuse))
    sink, cursor = BatchSink(url), Cursor("s")
    assert sink._stager is None
    move_all(sink, [lines(part) for part in batches(varied_rows(300, seed=9))], cursor)
    sink.close()
    assert cursor.inserted == 300 and sink.pipelined == 0
    assert_equals_a_rebuild(engine)


def test_the_config_can_keep_the_ingest_on_one_thread(url: str, engine: sa.Engine) -> None:
    """`storage.ingest_stage_ahead: false`: no stager, in this process or in the ingest child (which is told so
    when it opens the ledger); the same rows and rollups."""
    storage = StorageConfig(ledger=url, ingest_in="thread", ingest_stage_ahead=False)
    sink = Outbox.from_settings(storage)._ingester._sink
    assert isinstance(sink, BatchSink) and sink._stager is None
    cursor = Cursor("s")
    move_all(sink, [lines(part) for part in batches(varied_rows(300, seed=4))], cursor)
    sink.close()
    assert cursor.inserted == 300 and sink.pipelined == 0
    assert_equals_a_rebuild(engine)
    remote = Outbox.from_settings(storage.model_copy(update={"ingest_in": "process"}))._ingester._sink
    assert isinstance(remote, RemoteSink) and remote._stage_ahead is False
    opened: list[tuple[Any, ...]] = []
    exchange = remote._exchange

    def spy(op: str, *args: Any, timeout: float | None = None) -> tuple[str, Any, Any]:
        opened.append((op, *args))
        return exchange(op, *args, timeout=timeout)

    remote._exchange = spy  # type: ignore[method-assign]
    remote.start()
    remote.close()
    assert opened[0] == ("open", url, False)


def test_the_log_stays_small_over_a_backlog(url: str) -> None:
    """Each commit checkpoints the WAL as SQLite does by itself (`wal_autocheckpoint`), so a long backlog does
    not grow the log batch after batch (a checkpoint on another thread, racing the next batch, did)."""
    parts = [lines([row(f"w{b}-{i}", tags={"feature": f"f{i % 50}"}) for i in range(1000)]) for b in range(20)]
    wal, sizes = f"{db.sqlite_file(url)}-wal", []
    sink, cursor = BatchSink(url), Cursor("s")
    for i, part in enumerate(parts):
        sink.move(cursor, part, 1000, parts[i + 1] if i + 1 < len(parts) else b"")
        sizes.append(os.path.getsize(wal))
    sink.close()
    assert cursor.inserted == 20_000 and max(sizes) < 3 * max(sizes[:3])


@pytest.mark.parametrize("ingest_in", ["thread", "process"])
async def test_a_backlog_is_moved_with_each_batch_staged_ahead(tmp_path: Path, url: str, ingest_in: Any) -> None:
    """A dead process's file of many batches: the ingester hands each batch the next one's lines."""
    box = tmp_path / "box"
    rows = [row(f"b{n}") for n in range(400)]
    dead_file(box, "gone-1-a", lines(rows))
    outbox = Outbox(url, box, ingest_in=ingest_in, batch_bytes=8 * 1024)
    sink = outbox._ingester._sink
    outbox.start()
    await outbox.flush()
    if isinstance(sink, BatchSink):
        assert stager(sink).ready > 10  # batches found staged (~25 batches of 8 KB)
    await outbox.close()
    assert sorted(r.request_id for r in read_ledger(url)) == sorted(r["request_id"] for r in rows)
    assert os.listdir(box) == []


@pytest.mark.parametrize("ingest_in", ["thread", "process"])
async def test_a_backlog_of_several_files_is_staged_ahead_across_them(tmp_path: Path, url: str, ingest_in: Any) -> None:
    """A dead process's three files: the last batch of each file goes with the first of the next as its `ahead`,
    so every batch but the very first is found staged (in the child: arrives as the held lines, not again)."""
    box = tmp_path / "box"  # 2 or 3 batches a file
    rows = [row(f"f{n}") for n in range(300)]
    for seq in range(3):
        box.mkdir(exist_ok=True)
        (box / segment_name("gone-7-a", seq)).write_bytes(lines(rows[seq * 100 : (seq + 1) * 100]))
    outbox = Outbox(url, box, ingest_in=ingest_in, batch_bytes=len(lines(rows[:50])) + 1)
    sink = outbox._ingester._sink
    sent = sent_lines(sink) if isinstance(sink, RemoteSink) else []
    outbox.start()
    await outbox.flush()
    await outbox.close()
    if isinstance(sink, BatchSink):
        assert sink.pipelined >= 6 and stager(sink).ready == sink.pipelined - 1  # all but the first ahead
    else:
        assert len(sent) >= 6 and sent[0] is not None and sent[1:] == [None] * (len(sent) - 1)
    assert sorted(r.request_id for r in read_ledger(url)) == sorted(r["request_id"] for r in rows)
    assert os.listdir(box) == []


async def test_a_file_is_read_in_batches_of_even_size(tmp_path: Path, url: str, monkeypatch: Any) -> None:
    """A file of 4.2 batches is moved as 5 batches of ~0.84, not 4 whole and a sliver: the sliver would be
    appended at once and then wait for the whole batch staged ahead of it."""
    box, rows = tmp_path / "box", [row(f"e{n}") for n in range(420)]
    dead_file(box, "gone-8-a", lines(rows))
    sizes: list[int] = []
    move = BatchSink.move

    def spy(self: BatchSink, cursor: Cursor, part: bytes, count: int, ahead: bytes = b"") -> None:
        sizes.append(len(part))
        move(self, cursor, part, count, ahead)

    monkeypatch.setattr(BatchSink, "move", spy)
    outbox = Outbox(url, box, ingest_in="thread", batch_bytes=len(lines(rows[:100])))
    outbox.start()
    await outbox.flush()
    await outbox.close()
    assert len(sizes) == 5 and min(sizes) > 0.9 * max(sizes), sizes
    assert len(read_ledger(url)) == 420
