"""A key's own usage (`/v1/margin/usage`: `Window(key_id=…)`) reads its totals and exact percentiles' histograms
from the daily rollups' `key` dimension (ledger_daily, ledger_latency) and only its partial days from its rows:
the same summary, to the unit, as adding up the key's rows, on SQLite and PostgreSQL, for many keys, windows
with partial edges, open ends, a team or an org narrowing, and groupings (rows for all but `key`)."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from margin.report.queries import Window, summarize
from tests.ledger.varied import ingested, sqlite_ledger, varied_rows

START = datetime(2026, 11, 1, 21, tzinfo=UTC)
KEYS = ("k1", "k2", "k3", "k4", "k5")


def key_rows(n: int) -> list[dict[str, Any]]:
    """Varied rows (kinds, NULL dimensions, tags, latencies) spread over ~5 days and several keys."""
    rng = random.Random(17)
    rows = varied_rows(n)
    for r in rows:
        r["key_id"] = rng.choice([*KEYS, None])
        if rng.random() < 0.95:  # else an instant shared with others (nearest-rank ties)
            r["created_at"] = START + timedelta(minutes=rng.randrange(5 * 24 * 60))
    return rows


def fill(engine: sa.Engine) -> None:
    ingested(engine, key_rows(2500))  # the ingester's path: rollups updated batch by batch


def windows(key: str) -> list[Window]:
    day = timedelta(days=1)
    return [
        Window(key_id=key),
        Window(START + timedelta(hours=3), key_id=key),  # whole days, open end
        Window(START + timedelta(minutes=17), START + timedelta(days=3, hours=7, minutes=41), key_id=key),
        Window(None, START + 2 * day + timedelta(minutes=5), key_id=key),  # open start, a partial last day
        Window(START + timedelta(hours=1, minutes=2), START + timedelta(hours=9), key_id=key),  # within a day
        Window(START + timedelta(hours=3), START + 4 * day + timedelta(hours=3), key_id=key, team="search-team"),
        Window(START, START + 3 * day, key_id=key, org=("acme-org",)),
        Window(START + 10 * day, START + 11 * day, key_id=key),  # no rows
    ]


@contextmanager
def statements(engine: sa.Engine) -> Iterator[list[str]]:
    """The SQL the engine runs meanwhile (the listener is removed after: SQLAlchemy keys listeners by id)."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def check(engine: sa.Engine) -> dict[str, Any]:
    """Every key's summaries by both paths (equal); returns them for a comparison across databases."""
    found: dict[str, Any] = {}
    with statements(engine) as seen:
        for key in KEYS:
            for i, window in enumerate(windows(key)):
                rows = Window(window.since, window.until, window.team, key, rollup=False, org=window.org)
                for by in (None, "key", "model", "customer"):
                    fast = summarize(engine, window, by, limit=2)
                    assert fast == summarize(engine, rows, by, limit=2), (window, by)
                    found[f"{key} {i} {by}"] = fast
    assert any("ledger_daily" in s for s in seen) and any("ledger_latency" in s for s in seen)
    some = found["k1 0 None"]["totals"]
    assert some["requests"] > 300 and some["latency_p95_ms"] is not None and some["cost_usd"] != "0.000000000"
    assert found["k2 1 model"]["others"] is not None  # more models than the limit
    return found


def test_own_key_totals_from_the_rollups_equal_its_rows(tmp_path: Path) -> None:
    with sqlite_ledger(tmp_path / "k.db") as engine:
        fill(engine)
        check(engine)


def test_own_key_reads_no_row_of_its_whole_days(tmp_path: Path) -> None:
    """A window of whole days reads its sums and histograms from the rollups: the key's rows are only read
    for the exact percentiles (one latency bin each)."""
    with sqlite_ledger(tmp_path / "k.db") as engine:
        fill(engine)
        window = Window(datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 5, tzinfo=UTC), key_id="k3")
        with statements(engine) as seen:
            summary = summarize(engine, window)
    on_rows = [s for s in seen if re.search(r"\bFROM ledger\s", s)]
    assert summary["totals"]["requests"] > 100
    assert on_rows and all("LIMIT" in s for s in on_rows), on_rows  # _walk: one value of one bin


@pytest.mark.integration
def test_own_key_totals_from_the_rollups_on_postgres(pg_ledger: sa.Engine, tmp_path: Path) -> None:
    fill(pg_ledger)
    with sqlite_ledger(tmp_path / "k.db") as lite:
        fill(lite)
        assert check(pg_ledger) == check(lite)
