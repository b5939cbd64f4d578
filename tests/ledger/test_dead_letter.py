"""A row the database refuses never blocks the rows behind it: the outbox batch is moved line by line, the bad
row is set aside in `ledger_dead_letter` with its error, and a coerced copy keeps the request counted. On SQLite
and on PostgreSQL (whose columns really have lengths, and whose text refuses NUL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from margin.ledger import db, deadletter
from margin.ledger.models import ledger, ledger_dead_letter
from margin.ledger.outbox import Outbox
from tests.ledger.rows import row


@pytest.fixture
def pg_ledger(fresh_postgres: str) -> str:
    db.upgrade(fresh_postgres)
    return fresh_postgres


def read(url: str) -> tuple[list[Any], list[Any]]:
    engine = db.make_sync_engine(url)
    try:
        with engine.connect() as connection:
            rows = list(connection.execute(sa.select(ledger).order_by(ledger.c.id)))
            letters = list(connection.execute(sa.select(ledger_dead_letter).order_by(ledger_dead_letter.c.id)))
            return rows, letters
    finally:
        engine.dispose()


async def test_sqlite_overflowing_row_is_set_aside_and_salvaged(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    db.upgrade(url)
    outbox = Outbox(url, tmp_path / "box", interval_s=60.0)  # only the flushes move rows: their counts are exact
    outbox.start()
    await outbox.flush()  # the minute counts from a pass: before the first one, a waiting row is already overdue
    outbox.append(row("before"))
    outbox.append(row("huge", output_tokens=2**70))  # SQLite integers stop at 64 bits
    outbox.append(row("after"))
    assert await outbox.flush() == 3
    stats = outbox.stats()
    assert stats["dead_letters"] == 1 and stats["written"] == 3 and outbox.depth.rows == 0
    await outbox.close()
    rows, letters = read(url)
    assert [r.request_id for r in rows] == ["before", "huge", "after"]  # the salvaged copy keeps it counted
    assert rows[1].output_tokens == 2**30 - 1
    (letter,) = letters
    assert letter.request_id == "huge" and letter.salvaged and "output_tokens: integer out of range" in letter.error
    assert str(2**70) in letter.row and orjson.loads(letter.row)["request_id"] == "huge"


async def test_postgres_poison_rows_never_block_the_queue(pg_ledger: str, tmp_path: Path) -> None:
    outbox = Outbox(pg_ledger, tmp_path / "box", interval_s=60.0)  # only the flushes move rows
    outbox.start()
    await outbox.flush()  # the minute counts from a pass: before the first one, a waiting row is already overdue
    poison = [
        row("long-user", user="u" * 300),  # the reproduction: String(256)
        row("long-model", requested_model="m" * 129),
        row("nul", prompt_text="a\x00b"),
        row("big-int", input_tokens=2**40),  # Integer is 32-bit on PostgreSQL
    ]
    outbox.append(row("first"))
    for bad in poison:
        outbox.append(bad)
    outbox.append(row("last"))
    assert await outbox.flush() == 6
    assert outbox.stats()["dead_letters"] == 4 and outbox.depth.rows == 0
    outbox.append(row("next-batch"))
    assert await outbox.flush() == 1
    await outbox.close()
    rows, letters = read(pg_ledger)
    by_id = {r.request_id: r for r in rows}
    assert set(by_id) == {"first", "long-user", "long-model", "nul", "big-int", "last", "next-batch"}
    assert len(by_id["long-user"].user) == 256 and by_id["nul"].prompt_text == "a\ufffdb"
    assert by_id["big-int"].input_tokens == 2**30 - 1
    assert {letter.request_id for letter in letters} == {"long-user", "long-model", "nul", "big-int"}
    assert all(letter.salvaged and letter.error for letter in letters)
    assert "u" * 300 in next(letter.row for letter in letters if letter.request_id == "long-user")


async def test_postgres_replays_and_offsets(pg_ledger: str, tmp_path: Path) -> None:
    """The same path on PostgreSQL: typed rows, a replay dropped, the offset committed with the batch."""
    outbox = Outbox(pg_ledger, tmp_path / "box")
    outbox.start()
    outbox.append(row("a", tags={"feature": "search"}, stream=True, energy_j=1.5, guard={"pii": 1}))
    outbox.append(row("a"))
    outbox.append(row("b", kind="refund"))
    await outbox.flush()
    engine = db.make_sync_engine(pg_ledger)
    with engine.connect() as connection:
        (offset,) = connection.execute(sa.text("SELECT rows, byte_offset FROM outbox_offsets")).all()
    engine.dispose()
    assert offset.rows == 3 and offset.byte_offset == outbox.stats()["appended_bytes"]
    await outbox.close()
    rows, _ = read(pg_ledger)
    assert [(r.request_id, r.kind) for r in rows] == [("a", "request"), ("b", "refund")]
    assert rows[0].tags == {"feature": "search"} and rows[0].stream is True and rows[0].guard == {"pii": 1}
    assert rows[0].created_at.tzinfo is not None


def test_coerce_fits_every_column() -> None:
    coerced = deadletter.coerce(row("x", team="t" * 500, prompt_text="\x00", tags={"k": "a\x00"}, e2e_ms=float("inf")))
    assert len(coerced["team"]) == 128 and coerced["prompt_text"] == "\ufffd"
    assert coerced["tags"] == {"k": "a\ufffd"} and coerced["e2e_ms"] == 0.0
    assert deadletter.is_transient(sa.exc.OperationalError("x", {}, Exception()))
    assert not deadletter.is_transient(sa.exc.DataError("x", {}, Exception()))


async def test_sqlite_rows_whose_costs_overflow_the_rollup_never_block_the_queue(tmp_path: Path) -> None:
    """SQLite reports a SUM past 64 bits as an OperationalError ("integer overflow"), the error it gives when the
    database is busy: the batch was kept and retried forever. Rows of $2.1e9 each (a hostile upstream's 2^30
    tokens each way at $1 a token) overflowed the hour's rollup at the fifth: no row of the batch, or of any
    batch after it, reached the ledger. Now the batch is moved line by line, which adds each row to the rollups
    (SQLite's `+` past 64 bits gives a float, not an error)."""
    url = f"sqlite:///{tmp_path / 'd.db'}"
    db.upgrade(url)
    outbox = Outbox(url, tmp_path / "box", interval_s=60.0)  # only the flushes move rows
    outbox.start()
    await outbox.flush()
    dear = 2_147_483_646 * 10**9  # the most a row may cost (margin.specs.MAX_USD_PER_MTOK), in nano-USD
    for index in range(6):
        outbox.append(row(f"dear{index}", cost_nanousd=dear))
    outbox.append(row("cheap", team="other"))  # another rollup group
    assert await outbox.flush() == 7
    assert outbox.depth.rows == 0 and outbox.stats()["last_error"] is None
    await outbox.close()
    rows, letters = read(url)
    assert [r.request_id for r in rows] == [*(f"dear{index}" for index in range(6)), "cheap"] and letters == []
    assert all(r.cost_nanousd == dear for r in rows[:6])
