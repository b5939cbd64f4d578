"""ledger_charges keyed by the service tier (0019): kept batch by batch as a rebuild adds it up; the migration
splits a kept ledger's charges by tier (the days before 0018, which have none, unchanged) and back, and fills
every rollup of a ledger that comes from before 0009; on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from margin.ledger import db, rollup
from margin.ledger.models import ledger, ledger_charges
from margin.ledger.read import Window
from margin.ledger.read.charges import charges
from tests.ledger.varied import assert_equals_a_rebuild, ingested, snapshot, varied_rows
from tests.report.ledgers import complete, row

TIERS = (None, "flex", "priority", "default")
OLD_DAY = "2026-11-02"  # the varied rows' first day: its rows are from before 0018 (no tier)
SUMS = ("requests", "input_tokens", "output_tokens", "cost_nanousd", "energy_uj", "co2e_ng", "energy_n", "co2e_n")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'c.db'}"
    return str(request.getfixturevalue("fresh_postgres"))


def tiered_rows(n: int) -> list[dict[str, Any]]:
    """The varied rows, each at a tier in turn; none on OLD_DAY (rows written before 0018)."""
    rows = varied_rows(n)
    for i, r in enumerate(rows):
        old = r["created_at"].astimezone(UTC).date().isoformat() == OLD_DAY
        r["service_tier"] = None if old else TIERS[i % len(TIERS)]
    return rows


def charge_rows(engine: sa.Engine) -> list[tuple[Any, ...]]:
    """ledger_charges as it is stored, whatever its shape (with or without the tier)."""
    with engine.connect() as connection:
        columns = [c["name"] for c in sa.inspect(connection).get_columns("ledger_charges")]
        found = connection.exec_driver_sql(f"SELECT {', '.join(columns)} FROM ledger_charges")
        return sorted((tuple(r) for r in found), key=str)


def without_tier(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Tiered charges added up over the tier (day, key, team, model, backend, region, then SUMS)."""
    merged: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * len(SUMS))
    for r in rows:
        into = merged[r[:6]]
        for i, value in enumerate(r[7:]):
            into[i] += int(value)
    return sorted((key + tuple(sums) for key, sums in merged.items()), key=str)


def test_a_batch_by_batch_ingest_keeps_a_charge_per_tier(url: str) -> None:
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    try:
        rows = tiered_rows(900)
        ingested(engine, rows)
        tiers = {r[6] for r in charge_rows(engine)}
        assert tiers == {"", "flex", "priority", "default"}
        assert_equals_a_rebuild(engine)
        since, until = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
        with engine.connect() as connection:  # ledger_charges, and the rows ('' and NULL teams apart there)
            paths = [charges(connection, Window(since, until, rollup=rolled)) for rolled in (True, False)]
        priced = [r for r in rows if r["kind"] in ("request", "cache_hit") and r["cost_nanousd"] is not None]
        for tier in TIERS:
            mine = [r for r in priced if r["service_tier"] == tier]
            for found in paths:
                assert sum(c.requests for c in found if c.service_tier == tier) == len(mine)
                cost = sum(c.cost_nanousd for c in found if c.service_tier == tier)
                assert cost == sum(r["cost_nanousd"] for r in mine)
    finally:
        engine.dispose()


def test_0019_splits_kept_charges_by_tier_and_back(url: str) -> None:
    """A ledger kept batch by batch: downgraded to 0018, its charges are one per day × model… (a tier's requests
    blended with the others'); the upgrade adds them up again per tier, as a rebuild does, and the day before
    0018 (no tier) has the charges it had."""
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    try:
        ingested(engine, tiered_rows(900))
        kept = charge_rows(engine)
        db.downgrade(url, "0018")
        with engine.connect() as connection:
            columns = {c["name"] for c in sa.inspect(connection).get_columns("ledger_charges")}
        assert "service_tier" not in columns
        blended = charge_rows(engine)
        assert blended == without_tier(kept) and len(blended) < len(kept)
        old_day = [r for r in blended if r[0] == OLD_DAY]
        db.upgrade(url)
        assert charge_rows(engine) == kept
        assert [r[:6] + r[7:] for r in charge_rows(engine) if r[0] == OLD_DAY] == old_day and old_day
        assert {r[6] for r in charge_rows(engine) if r[0] == OLD_DAY} == {""}
        assert_equals_a_rebuild(engine)
    finally:
        engine.dispose()


def test_0019_fills_every_rollup_of_a_ledger_from_before_0009(url: str) -> None:
    """0009 no longer rebuilds (today's rebuild reads 0018's column): a ledger with rows at 0008 has every
    rollup filled at the head, the charges split by tier, as a rebuild fills them."""
    db.upgrade(url, "0008")
    engine = db.make_sync_engine(url)
    try:
        with engine.connect() as connection:
            present = {c["name"] for c in sa.inspect(connection).get_columns("ledger")}
        old = sa.Table("ledger", sa.MetaData(), *(sa.Column(c.name, c.type) for c in ledger.c if c.name in present))
        rows = [complete(row(f"o{i}", cost_nanousd=1_000 * (i + 1), input_tokens=i)) for i in range(5)]
        with engine.begin() as connection:
            connection.execute(old.insert(), [{k: v for k, v in r.items() if k in old.c} for r in rows])
        db.upgrade(url)
        filled = snapshot(engine)
        assert all(filled[table.name] for table in rollup.ROLLUPS)
        assert filled["ledger_charges"] == [("2026-11-02", "k1", "search-team", "priced", "api", "", "", 5, 10, 0,
                                             15_000, 0, 0, 0, 0)]  # fmt: skip
        assert_equals_a_rebuild(engine)
        with engine.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(ledger_charges)).scalar_one() == 1
    finally:
        engine.dispose()
