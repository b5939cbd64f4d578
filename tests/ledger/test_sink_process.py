"""The ledger's SQL in a child process (storage.ingest_in: process, the gateway's default): it runs in another
process; a child that dies is replaced and no row is lost or doubled; a child whose gateway was killed exits,
and the next start ingests what was left, once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from margin.ledger import sink_process
from margin.ledger.batch import Cursor
from margin.ledger.outbox import Outbox, encode
from tests.helpers import gone, wait_gone
from tests.ledger.rows import read_ledger, row

GATEWAY = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from margin.ledger.outbox import Outbox
    from tests.ledger.rows import row

    async def main():
        outbox = Outbox(sys.argv[1], Path(sys.argv[2]), ingest_in="process")
        outbox.start()
        outbox.append(row("before-flush"))
        await outbox.flush()
        outbox.append(row("after-flush"))  # acknowledged, not yet in the database when the process dies
        print(outbox.stats()["ingest_pid"], flush=True)
        time.sleep(600)

    asyncio.run(main())
    """
)


async def test_the_sql_runs_in_a_child_process(tmp_path: Path, url: str) -> None:
    outbox = Outbox(url, tmp_path / "box", ingest_in="process", interval_s=60.0)  # only the flush moves rows
    outbox.start()
    await outbox.flush()  # the minute counts from a pass: before the first one, a waiting row is already overdue
    outbox.append(row("a"))
    assert await outbox.flush() == 1
    stats = outbox.stats()
    child = stats["ingest_pid"]
    assert child is not None and child != os.getpid() and not gone(child)
    assert stats["ingest_starts"] == 1 and stats["written"] == 1
    await outbox.close()
    assert gone(child)  # close ends it
    assert [r.request_id for r in read_ledger(url)] == ["a"]


async def test_a_killed_child_is_replaced_and_no_row_is_lost_or_doubled(tmp_path: Path, url: str) -> None:
    outbox = Outbox(url, tmp_path / "box", ingest_in="process", interval_s=0.01)
    outbox.start()
    for n in range(50):
        outbox.append(row(f"first-{n}"))
    await outbox.flush()  # this flush's pass, or background ones (every 10 ms here) before it, move all 50
    assert outbox.depth.rows == 0 and outbox.stats()["written"] == 50
    first_child = outbox.stats()["ingest_pid"]
    os.kill(first_child, signal.SIGKILL)
    for n in range(50):
        outbox.append(row(f"second-{n}"))
    for _ in range(50):  # the pass that meets the dead child fails; the next one starts another
        await outbox.flush()
        if outbox.depth.rows == 0:
            break
        await asyncio.sleep(0.05)
    stats = outbox.stats()
    assert outbox.depth.rows == 0 and stats["ingest_starts"] == 2 and stats["ingest_pid"] != first_child
    assert stats["failed_flushes"] >= 1
    await outbox.close()
    ids = [r.request_id for r in read_ledger(url)]
    assert len(ids) == 100 and set(ids) == {f"{p}-{n}" for p in ("first", "second") for n in range(50)}


def kill_a_gateway_and_watch_its_child(url: str, box: Path) -> None:
    gateway = subprocess.Popen(
        [sys.executable, "-c", GATEWAY, url, str(box)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert gateway.stdout is not None
        child = int(gateway.stdout.readline())
        assert not gone(child)
        os.kill(gateway.pid, signal.SIGKILL)
        gateway.wait()
        assert wait_gone([child]) == [], "the ingest process outlived its gateway"
    finally:
        gateway.kill()
        gateway.wait()
        if gateway.stdout is not None:
            gateway.stdout.close()


async def test_the_child_exits_with_its_killed_gateway_and_the_next_start_ingests_the_rest(
    tmp_path: Path, url: str
) -> None:
    box = tmp_path / "box"
    kill_a_gateway_and_watch_its_child(url, box)
    assert [r.request_id for r in read_ledger(url)] == ["before-flush"]
    outbox = Outbox(url, box, ingest_in="process")
    outbox.start()
    await outbox.flush()
    await outbox.close()
    assert sorted(r.request_id for r in read_ledger(url)) == ["after-flush", "before-flush"]
    assert os.listdir(box) == []


async def test_a_ledger_the_child_cannot_open_keeps_the_rows_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no second child within the test: with the 1 s first wait, a stall before the second flush let a pass
    # (the flush's, or a background one: every 10 ms, slowing to 1 s) start another
    monkeypatch.setattr(sink_process, "RESTART_BACKOFF_S", (60.0, 60.0))
    outbox = Outbox("nosuchdb://u@h/db", tmp_path / "box", ingest_in="process", interval_s=0.01)
    outbox.start()
    outbox.append(row("kept"))
    assert await outbox.flush() == 0
    stats = outbox.stats()
    assert stats["outbox_rows"] == 1 and stats["failed_flushes"] >= 1
    assert "could not open the ledger" in stats["last_error"] and "nosuchdb" in stats["last_error"]
    assert stats["ingest_pid"] is None  # no child left running for a ledger it cannot open
    assert await outbox.flush() == 0
    stats = outbox.stats()
    assert stats["ingest_starts"] == 1 and "next ingest process starts in" in stats["last_error"]  # no loop
    await outbox.close()
    assert len(os.listdir(tmp_path / "box")) == 2  # the row stays in its file (and the lock file) for a later start


def sent_lines(sink: sink_process.RemoteSink) -> list[bytes | None]:
    """The `lines` of each `move` the parent sends its child (None: the child's held `ahead`)."""
    sent: list[bytes | None] = []
    exchange = sink._exchange

    def spy(op: str, *args: Any, timeout: float | None = None) -> tuple[str, Any, Any]:
        if op == "move":
            sent.append(args[1])
        return exchange(op, *args, timeout=timeout)

    sink._exchange = spy  # type: ignore[method-assign]
    return sent


def parts(count: int) -> list[bytes]:
    return [b"".join(encode(row(f"r{n}-{i}")) for i in range(20)) for n in range(count)]


def test_lines_sent_ahead_are_not_sent_again(url: str) -> None:
    """A backlog through the child: each batch after the first travels once, as the call before's `ahead`."""
    sink = sink_process.RemoteSink(url)
    sent, batches, cursor = sent_lines(sink), parts(4), Cursor("seg")
    try:
        for i, lines in enumerate(batches):
            sink.move(cursor, lines, 20, batches[i + 1] if i + 1 < len(batches) else b"")
    finally:
        sink.close()
    assert sent == [batches[0], None, None, None]
    assert cursor.offset == sum(map(len, batches)) and cursor.rows == 80
    assert sorted(r.request_id for r in read_ledger(url)) == sorted(f"r{n}-{i}" for n in range(4) for i in range(20))


def test_a_new_child_gets_the_lines_themselves(url: str) -> None:
    """The child that held the next lines died: the call fails (rows stay in the outbox), and the retry sends
    the lines to the new child, which appends each row once."""
    sink = sink_process.RemoteSink(url)
    sent, batches, cursor = sent_lines(sink), parts(3), Cursor("seg")
    try:
        sink.move(cursor, batches[0], 20, batches[1])
        assert sink.pid is not None
        os.kill(sink.pid, signal.SIGKILL)
        with pytest.raises(sink_process.SinkUnavailable):
            sink.move(cursor, batches[1], 20, batches[2])
        sink._not_before = 0.0  # no restart wait in a test
        sink.move(cursor, batches[1], 20, batches[2])
        sink.move(cursor, batches[2], 20)
    finally:
        sink.close()
    assert sent == [batches[0], None, batches[1], None]
    assert sink.starts == 2 and cursor.rows == 60
    ids = [r.request_id for r in read_ledger(url)]
    assert len(ids) == 60 and len(set(ids)) == 60


def test_a_failed_call_is_retried_with_the_lines_themselves(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child answered `failed` (the database was busy): what it holds is not relied on; the retry sends
    the lines again, and only a call that succeeded lets the next one say "those"."""
    sink = sink_process.RemoteSink(url)
    batches, cursor = parts(3), Cursor("seg")
    calls = {"n": 0}
    exchange = sink._exchange

    def busy_once(op: str, *args: Any, timeout: float | None = None) -> tuple[str, Any, Any]:
        calls["n"] += 1
        if op == "move" and calls["n"] == 3:  # open, first move, then this one
            return "failed", "OperationalError: database is locked", None
        return exchange(op, *args, timeout=timeout)

    sink._exchange = busy_once  # type: ignore[method-assign]
    sent = sent_lines(sink)
    try:
        sink.move(cursor, batches[0], 20, batches[1])
        with pytest.raises(sink_process.SinkFailed):
            sink.move(cursor, batches[1], 20, batches[2])
        sink.move(cursor, batches[1], 20, batches[2])
        sink.move(cursor, batches[2], 20)
    finally:
        sink.close()
    assert sent == [batches[0], None, batches[1], None]
    ids = [r.request_id for r in read_ledger(url)]
    assert len(ids) == 60 and len(set(ids)) == 60
