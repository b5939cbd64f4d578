"""The cost levers, the attach rate and the tag keys' sums from the rollups: the same answer as from rows, on SQLite and
PostgreSQL, for windows with partial edges, across a month boundary, open at either end, and team views;
batch by batch equals a rebuild."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from margin.ledger import read, rollup
from margin.ledger.read.attach import ALL_DAYS, attach, month_masks
from margin.ledger.read.levers import levers
from tests.ledger.varied import ingested, sqlite_ledger, varied_rows

START = datetime(2026, 10, 31, 19, tzinfo=UTC)  # the varied rows' ~30 hours, moved across Oct 31 -> Nov 1


def lever_rows(n: int) -> list[dict[str, Any]]:
    """Varied rows moved to straddle a month, a third of them batch lines or preferred routes."""
    rng = random.Random(3)
    rows = varied_rows(n)
    shift = START - datetime(2026, 11, 2, 22, tzinfo=UTC)
    for r in rows:
        r["created_at"] += shift
        pick = rng.random()
        if pick < 0.15:
            r.update(batch_id=f"batch_{rng.randrange(3)}", discount_nanousd=rng.choice([None, rng.randrange(9_000)]))
        elif pick < 0.35:
            r.update(
                route_pref=rng.choice(["carbon", "cost"]),
                route_default=rng.choice(["priced", "fake-chat", None]),
                default_cost_nanousd=rng.choice([None, rng.randrange(0, 6_000_000)]),
                default_co2e_g=rng.choice([None, rng.uniform(0, 3)]),
            )
    return rows


def windows() -> list[read.Window]:
    at = START
    return [
        read.Window(),
        read.Window(at + timedelta(minutes=17), at + timedelta(hours=29, minutes=3)),  # partial hours, 2 months
        read.Window(at - timedelta(days=40), at + timedelta(days=3)),  # whole days and months
        read.Window(None, at + timedelta(hours=6, minutes=30)),  # open start
        read.Window(at + timedelta(hours=5), None),  # open end
        read.Window(at + timedelta(hours=5), at + timedelta(hours=29), team="search-team"),
        read.Window(at, at + timedelta(hours=40), org=("acme-org",)),
    ]


def fill(engine: sa.Engine) -> None:
    ingested(engine, lever_rows(1200))


def check_both_paths(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        for window in windows():
            slow = read.Window(window.since, window.until, window.team, rollup=False, org=window.org)
            assert levers(connection, window) == levers(connection, slow), window
            assert attach(connection, window) == attach(connection, slow), window
            for by in ("feature", "customer"):  # ledger_daily: a tag key per team and across teams
                assert read.grouped(connection, window, by) == read.grouped(connection, slow, by), (window, by)
        everything = levers(connection, read.Window())
    assert everything.batch_requests > 100 and everything.preferred_requests > 100
    assert everything.preferred_moved > 0 and everything.preferred_unknown > 0
    assert everything.batch_discount_usd > 0 and everything.preferred_saved_co2e_g != 0


def test_month_masks() -> None:
    assert month_masks(date(2026, 10, 30), date(2026, 12, 2)) == {
        "2026-10": 1 << 29 | 1 << 30,
        "2026-11": ALL_DAYS,
        "2026-12": 1,
    }
    assert month_masks(date(2026, 2, 1), date(2026, 3, 1)) == {"2026-02": ALL_DAYS}
    assert month_masks(date(2026, 2, 3), date(2026, 2, 5)) == {"2026-02": 0b1100}
    assert month_masks(date(2026, 2, 3), date(2026, 2, 3)) == {}


def test_the_attach_rate_of_a_window_of_centuries(tmp_path: Path) -> None:
    """`margin report --view margin --since 1900-01-01` (or `--until 9999-12-31`): the rollup's part walked and
    queried every month of the window, one select each, and SQLite refused a UNION of more than 500 (exit 2,
    "too many terms in compound SELECT"); an end in December 9999 overflowed the date of the month after (a
    traceback). The months read are those the rollup has, the whole ones in one select: the same answer as
    the rows'."""
    with sqlite_ledger(tmp_path / "r.db") as engine:
        fill(engine)
        with engine.connect() as connection:
            for since, until in ((1900, 2100), (1, 9999), (2000, 9999)):
                window = read.Window(datetime(since, 1, 1, tzinfo=UTC), datetime(until, 12, 31, tzinfo=UTC))
                slow = read.Window(window.since, window.until, rollup=False)
                found = attach(connection, window)
                assert found == attach(connection, slow) and found[1] > 0, window
    assert month_masks(date(9999, 11, 30), date.max) == {"9999-11": 1 << 29, "9999-12": ALL_DAYS}


def test_levers_and_attach_equal_on_both_paths_and_after_a_rebuild(tmp_path: Path) -> None:
    with sqlite_ledger(tmp_path / "r.db") as engine:
        fill(engine)
        check_both_paths(engine)
        with engine.connect() as connection:
            before = {t.name: sorted(map(tuple, connection.execute(sa.select(t))), key=str) for t in rollup.ROLLUPS[:4]}
        with engine.begin() as connection:
            rollup.rebuild(connection)
        with engine.connect() as connection:
            after = {t.name: sorted(map(tuple, connection.execute(sa.select(t))), key=str) for t in rollup.ROLLUPS[:4]}
            months = {row[0] for row in connection.exec_driver_sql("SELECT DISTINCT month FROM ledger_attach")}
    assert before == after and months == {"2026-10", "2026-11"}


@pytest.mark.integration
def test_levers_and_attach_equal_on_both_paths_on_postgres(pg_ledger: sa.Engine) -> None:
    fill(pg_ledger)
    check_both_paths(pg_ledger)
