"""Recovery: the files of a process that died (`kill -9`) are ingested by the next one to start, from their
committed offsets, once; a live process's files are never touched; a torn last line is dropped; a damaged
line goes to the dead-letter table and the lines behind it are ingested."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from margin.ledger import db
from margin.ledger.models import ledger_dead_letter, ledger_hourly, outbox_offsets
from margin.ledger.outbox import IngestIn, Outbox, encode
from margin.ledger.segments import list_segments, segment_name
from tests.ledger.rows import read_ledger, row

WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from margin.ledger.outbox import SegmentWriter, encode
    from tests.ledger.rows import row
    writer = SegmentWriter(Path(sys.argv[1]), segment_bytes=int(sys.argv[3]), fsync="never")
    writer.open()
    for n in range(int(sys.argv[2])):
        writer.write(encode(row(f"dead-{n}")))
    print(writer.owner, flush=True)
    time.sleep(600)
    """
)


@contextmanager
def writer_process(directory: Path, rows: int, segment_bytes: int = 1 << 20) -> Iterator[subprocess.Popen[str]]:
    """Another process that wrote `rows` rows to the outbox and is still alive (holding its lock)."""
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory), str(rows), str(segment_bytes)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert process.stdout is not None
        process.owner = process.stdout.readline().strip()  # type: ignore[attr-defined]
        yield process
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def kill_9(process: subprocess.Popen[str]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


async def test_a_killed_process_rows_are_ingested_by_the_next_start(tmp_path: Path, url: str) -> None:
    box = tmp_path / "box"
    with writer_process(box, 25, segment_bytes=2048) as dead:
        kill_9(dead)
    assert len(list_segments(box)) >= 3
    outbox = Outbox(url, box)
    outbox.start()
    await outbox.flush()
    assert sorted(r.request_id for r in read_ledger(url)) == sorted(f"dead-{n}" for n in range(25))
    assert outbox.depth.rows == 0
    assert set(os.listdir(box)) == {f"{outbox.owner}.lock", segment_name(outbox.owner, 0)}  # the dead one's: gone
    assert read_ledger(url, outbox_offsets) == []
    await outbox.close()
    assert os.listdir(box) == []


async def test_a_live_process_files_are_left_to_it(tmp_path: Path, url: str) -> None:
    box = tmp_path / "box"
    with writer_process(box, 3) as alive:
        outbox = Outbox(url, box, rescan_s=0.05)
        outbox.start()
        await outbox.flush()
        assert read_ledger(url) == []  # its lock is held: not ours to read
        assert outbox.depth.rows == 0
        kill_9(alive)
        for _ in range(100):  # within rescan_s the sibling notices and takes the files over
            await outbox.flush()
            if len(read_ledger(url)) == 3:
                break
        assert sorted(r.request_id for r in read_ledger(url)) == ["dead-0", "dead-1", "dead-2"]
        await outbox.close()


def dead_file(box: Path, owner: str, content: bytes) -> str:
    """A file left by a process that is gone (no lock file at all: killed before it could be cleaned)."""
    box.mkdir(exist_ok=True)
    name = segment_name(owner, 0)
    (box / name).write_bytes(content)
    return name


async def test_recovery_resumes_at_the_committed_offset(tmp_path: Path, url: str) -> None:
    box = tmp_path / "box"
    lines = [encode(row(f"r{n}")) for n in range(3)]
    name = dead_file(box, "gone-123-abc", b"".join(lines))
    engine = db.make_sync_engine(url)
    with engine.begin() as connection:  # the first line's batch was committed before the crash
        connection.execute(
            outbox_offsets.insert(),
            [{"segment": name, "byte_offset": len(lines[0]), "rows": 1, "updated_at": datetime.now(UTC)}],
        )
    engine.dispose()
    outbox = Outbox(url, box)
    outbox.start()
    await outbox.flush()
    await outbox.close()
    assert [r.request_id for r in read_ledger(url)] == ["r1", "r2"]  # r0 is not read again
    assert os.listdir(box) == [] and read_ledger(url, outbox_offsets) == []


async def test_a_replayed_file_adds_nothing(tmp_path: Path, url: str) -> None:
    """A crash between a file's last batch and its deletion: the file is read again; nothing is counted twice."""
    box = tmp_path / "box"
    lines = b"".join(encode(row(f"r{n}")) for n in range(4))
    dead_file(box, "gone-1-a", lines)
    outbox = Outbox(url, box)
    outbox.start()
    await outbox.flush()
    dead_file(box, "gone-2-b", lines)  # the same rows again, as a file nobody deleted
    outbox._ingester._rescan_s = 0
    await outbox.flush()
    await outbox.flush()
    await outbox.close()
    assert len(read_ledger(url)) == 4
    assert [r.requests for r in read_ledger(url, ledger_hourly)] == [4]


async def test_a_torn_last_line_is_dropped(tmp_path: Path, url: str) -> None:
    box = tmp_path / "box"
    torn = encode(row("torn"))[:-40]  # the process died inside the write of its last row
    dead_file(box, "gone-1-a", encode(row("whole")) + torn)
    outbox = Outbox(url, box)
    outbox.start()
    await outbox.flush()
    assert [r.request_id for r in read_ledger(url)] == ["whole"]
    assert outbox.stats()["torn_bytes"] == len(torn) and outbox.depth.rows == 0
    await outbox.close()
    assert os.listdir(box) == [] and read_ledger(url, ledger_dead_letter) == []


@pytest.mark.parametrize("ingest_in", ["thread", "process"])
async def test_damaged_bytes_go_to_the_dead_letters_and_the_rest_is_ingested(
    tmp_path: Path, url: str, ingest_in: IngestIn
) -> None:
    box = tmp_path / "box"
    damaged = b"\x00\x00\x00\x00garbage\xff\n"  # e.g. zeroes a power cut left in the page cache
    dead_file(box, "gone-1-a", encode(row("before")) + damaged + encode(row("after")))
    outbox = Outbox(url, box, ingest_in=ingest_in)
    outbox.start()
    await outbox.flush()
    await outbox.close()
    assert [r.request_id for r in read_ledger(url)] == ["before", "after"]
    (letter,) = read_ledger(url, ledger_dead_letter)
    assert letter.request_id == "?" and not letter.salvaged and "garbage" in letter.row
    assert os.listdir(box) == []


async def test_a_lock_file_without_files_is_cleared(tmp_path: Path, url: str) -> None:
    box = tmp_path / "box"
    with writer_process(box, 0) as dead:
        kill_9(dead)
    owner = dead.owner  # type: ignore[attr-defined]
    assert f"{owner}.lock" in os.listdir(box)
    for name in os.listdir(box):  # the killed writer had written nothing: drop its empty file too
        if name.endswith(".jsonl"):
            (box / name).unlink()
    outbox = Outbox(url, box)
    outbox.start()
    await outbox.flush()
    assert f"{owner}.lock" not in os.listdir(box)
    await outbox.close()
