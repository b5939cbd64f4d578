"""Carbon per 1K tokens over the requests with a carbon figure only (0028's `co2e_tokens`, and `energy_tokens`):
kept batch by batch as a rebuild adds them up, read from the rollups and the rows alike, and added up by the
migration for the rollup rows a ledger already holds; on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from margin.ledger import db, ingest
from margin.ledger.read import Window
from margin.report.metrics import carbon
from tests.ledger.varied import assert_equals_a_rebuild, ingested, snapshot, varied_rows
from tests.report.ledgers import at, complete, row

ROLLUPS = ("ledger_hourly", "ledger_daily")
SUMS = ("co2e_tokens", "energy_tokens")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'f.db'}"
    return str(request.getfixturevalue("fresh_postgres"))


def columns(engine: sa.Engine, table: str) -> set[str]:
    with engine.connect() as connection:
        return {c["name"] for c in sa.inspect(connection).get_columns(table)}


def test_carbon_per_1k_tokens_leaves_out_the_tokens_without_a_figure(url: str) -> None:
    """100 local tokens at 1 g and 9,900 hosted tokens (no energy model) in one region: 10 g per 1K, not 0.1."""
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    try:
        rows = [
            row("local", region="eu", model="local", input_tokens=60, output_tokens=40, energy_j=3600.0,
                energy_method="modelled", co2e_g=1.0, created_at=at(2, 1)),
            row("hosted", region="eu", input_tokens=9_000, output_tokens=900, created_at=at(2, 3)),
            row("cached", region="eu", kind="cache_hit", input_tokens=5, output_tokens=5, created_at=at(3, 0, 10)),
        ]  # fmt: skip
        with engine.begin() as connection:
            ingest.ingest_batch(connection, [complete(r) for r in rows])
        # whole days from the rollups, and a window that ends mid-hour (its last part from the rows)
        for since, until in ((at(1), at(16)), (at(2, 0, 30), at(3, 0, 30))):
            for rolled in (True, False):
                (eu,) = carbon(engine, Window(since, until, rollup=rolled))
                assert (eu.tokens, eu.co2e_tokens, eu.co2e_g) == (10_010, 100, 1.0)
                assert eu.co2e_g_per_1k_tokens == pytest.approx(10.0)
                assert eu.to_json()["co2e_g_per_1k_tokens"] == pytest.approx(10.0)
        (hosted,) = carbon(engine, Window(at(2, 2), at(2, 4)))
        assert hosted.co2e_tokens == 0 and hosted.co2e_g_per_1k_tokens is None  # unknown, not 0 g
    finally:
        engine.dispose()


def test_ingest_keeps_the_figure_tokens_as_a_rebuild(url: str) -> None:
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    try:
        rows = varied_rows(600)
        ingested(engine, rows)
        assert_equals_a_rebuild(engine)
        traffic = [r for r in rows if r["kind"] in ("request", "cache_hit")]
        with engine.connect() as connection:
            found = connection.exec_driver_sql("SELECT SUM(co2e_tokens), SUM(energy_tokens) FROM ledger_hourly")
            co2e, energy = found.one()
        tokens = [(r["input_tokens"] + r["output_tokens"], r["co2e_g"], r["energy_j"]) for r in traffic]
        assert co2e == sum(n for n, g, _ in tokens if g is not None)
        assert energy == sum(n for n, _, j in tokens if j is not None)
        assert 0 < co2e < sum(n for n, _, _ in tokens)
    finally:
        engine.dispose()


def test_0028_adds_up_the_rollups_a_ledger_holds_and_back(url: str) -> None:
    """A ledger kept batch by batch, downgraded to 0027 (no such columns): the upgrade adds the sums up for every
    hourly and daily rollup row, per team and across teams, as ingest had."""
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    try:
        ingested(engine, varied_rows(600))
        kept = snapshot(engine)
        assert any(r for r in kept["ledger_daily"] if r[3] == "*")  # the tag keys' rows across teams
        db.downgrade(url, "0027")
        for table in ROLLUPS:
            assert not set(SUMS) & columns(engine, table)
        db.upgrade(url)
        for table in ROLLUPS:
            assert set(SUMS) <= columns(engine, table)
        assert snapshot(engine) == kept
        assert_equals_a_rebuild(engine)
    finally:
        engine.dispose()
