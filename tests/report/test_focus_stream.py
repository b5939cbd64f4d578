"""`margin export focus` streams its charges from the ledger to the file (`stream_charges`, Parquet row groups of
ROW_GROUP): the rows are the ones the in-memory export wrote, in the same order (CSV: the same bytes), on a ledger
whose tag values sort differently as text and as the database's default (NULL, case, non-ASCII, digits)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from margin.ledger import db, ingest, rollup
from margin.ledger.read import Window
from margin.ledger.read.charges import CHARGE_GRAIN, charges, stream_charges
from margin.report import focus
from margin.report.focus import export, focus_rows, parse_period, write_csv, write_parquet
from tests.helpers import fake_settings
from tests.report import ledgers

FEATURES = [None, "Search", "search", "ß-ranking", "Ärger", "zeta", "10", "9", "None", "a b", "émoji-✓"]


def _many(engine: sa.Engine) -> None:
    rows = []
    for n in range(400):
        tags = {"customer": f"c{n % 7}"} if n % 5 else {}
        if (feature := FEATURES[(n // 2) % len(FEATURES)]) is not None:
            tags["feature"] = feature
        rows.append(  # few days, keys and models: groups that differ in a tag alone, sorted by it
            ledgers.row(
                f"s{n}", tags=tags, cost_nanousd=1_000 * (n + 1), input_tokens=n, output_tokens=2 * n,
                created_at=ledgers.at(1 + n % 3, n % 24), team=None if n % 13 == 0 else f"team-{n % 2}",
                key_id=None if n % 19 == 0 else "k1", region=None if n % 2 else "eu", model="m1",
                service_tier=None if n % 3 else "flex", batch_id="b1" if n % 17 == 0 else None,
                discount_nanousd=500 if n % 17 == 0 else None,
            )
        )  # fmt: skip
    with engine.begin() as connection:
        ingest.ingest_batch(connection, rows)
        rollup.rebuild(connection, rollup.DEFAULT_TAG_KEYS)


@pytest.mark.parametrize("tags", [(), ("feature",), ("feature", "customer"), ("customer", "feature")])
def test_streamed_charges_are_the_in_memory_ones_in_order(engine: sa.Engine, tags: tuple[str, ...]) -> None:
    _many(engine)
    start, end = parse_period("2026-11")
    for rollup_ in (True, False):
        window = Window(start, end, rollup=rollup_)
        with engine.connect() as connection:
            held = charges(connection, window, (*CHARGE_GRAIN, *tags))
            streamed = list(stream_charges(connection, window, (*CHARGE_GRAIN, *tags), batch=7))
        assert len(held) > 20 and streamed == held
    edges = Window(start + timedelta(hours=5), end - timedelta(hours=3))  # a rollup part and row parts: merged
    with engine.connect() as connection:
        assert list(stream_charges(connection, edges, (*CHARGE_GRAIN, *tags))) == charges(
            connection, edges, (*CHARGE_GRAIN, *tags)
        )


@pytest.mark.parametrize("tags", [(), ("feature", "customer")])
def test_export_writes_what_the_in_memory_export_wrote(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tags: tuple[str, ...]
) -> None:
    _many(engine)
    monkeypatch.setattr(focus, "ROW_GROUP", 16)  # several row groups
    settings = fake_settings(tmp_path / "x.db")
    held = focus_rows(engine, settings, "2026-11", tags=tags)
    write_csv(held, tmp_path / "held.csv")
    streamed = export(engine, settings, "2026-11", tmp_path / "out.csv", tags=tags)
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "held.csv").read_bytes()
    assert streamed.count == held.count > 16 and streamed.unpriced_requests == held.unpriced_requests
    write_parquet(held, tmp_path / "held.parquet")
    export(engine, settings, "2026-11", tmp_path / "out.parquet", tags=tags)
    out, before = pq.read_table(tmp_path / "out.parquet"), pq.read_table(tmp_path / "held.parquet")
    assert out.schema == before.schema and out.to_pylist() == before.to_pylist()
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_row_groups == -(-held.count // 16)


def test_an_empty_month_is_a_file_with_the_columns(engine: sa.Engine, tmp_path: Path) -> None:
    result = export(engine, fake_settings(tmp_path / "x.db"), "2026-10", tmp_path / "none.parquet")
    table = pq.read_table(tmp_path / "none.parquet")
    assert result.count == table.num_rows == 0 and table.column_names == list(focus.COLUMNS)


@pytest.mark.integration
def test_streamed_charges_keep_their_order_on_postgres(fresh_postgres: str) -> None:
    db.upgrade(fresh_postgres)
    engine = db.make_sync_engine(fresh_postgres)
    try:
        _many(engine)
        window = Window(*parse_period("2026-11"), rollup=False)
        with engine.connect() as connection:  # PostgreSQL's collation is not code point order: COLLATE "C"
            for tags in (("feature",), ("customer", "feature")):
                held = charges(connection, window, (*CHARGE_GRAIN, *tags))
                assert list(stream_charges(connection, window, (*CHARGE_GRAIN, *tags), batch=7)) == held
    finally:
        engine.dispose()
