"""A capped breakdown ranks and cuts its groups in SQL (margin.ledger.read.top): the same JSON as ranking every
group in memory (the reference below is the code it replaced), on a ledger with more groups than the limit,
ties in cost and requests, non-ASCII keys (byte order = code point order), a NULL group, open and partial
windows, a team's and a key's view; on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from margin.dashboard import queries as dashboard
from margin.ledger import read
from margin.report import queries as report
from margin.report.queries import PERCENTILE_NOTE, PERCENTILES, Window, figures, summarize
from tests.ledger.varied import ingested, sqlite_ledger, varied_rows

START = datetime(2026, 11, 1, 21, tzinfo=UTC)
NAMES = ["a", "B", "b", "é", "z", "Z", "ß", "ꙮ", "😀", "None", "a b", "0", "10", "9"]


def rows(n: int) -> list[dict[str, Any]]:
    """Varied rows over ~3 days with ~250 users, costs from a few values (ties in cost and requests)."""
    rng = random.Random(23)
    out = varied_rows(n, seed=29)
    for r in out:
        r["user"] = None if rng.random() < 0.05 else f"{rng.choice(NAMES)}{rng.randrange(18)}"
        r["key_id"] = rng.choice(["k1", "k2", "k3", None])
        r["created_at"] = START + timedelta(minutes=rng.randrange(3 * 24 * 60))
        if r["cost_nanousd"] is not None:
            r["cost_nanousd"] = rng.choice([0, 1000, 2000, 3000])
        r["tags"] = {**r["tags"], "customer": rng.choice([*NAMES, None, 7])}
    return out


def fill(engine: sa.Engine) -> None:
    ingested(engine, rows(1500))


def ranked(parts: dict[Any, read.Sums], limit: int | None) -> tuple[list[tuple[Any, read.Sums]], list[Any]]:
    order = sorted(parts.items(), key=lambda kv: (-kv[1]["cost_nanousd"], -kv[1]["requests"], str(kv[0])))
    if limit is None or len(order) <= limit:
        return order, []
    return order[:limit], [key for key, _ in order[limit:]]


def _latency(e2e: dict[int, int] | None, ttft: dict[int, int] | None) -> dict[str, Any]:
    pick = read.from_histogram
    return {"latency_p50_ms": pick(e2e or {}, 50), "latency_p95_ms": pick(e2e or {}, 95), "ttft_p50_ms": pick(ttft or {}, 50)}  # fmt: skip  # noqa: E501


def _merged(histograms: dict[Any, dict[int, int]], keys: list[Any]) -> dict[int, int]:
    out: dict[int, int] = {}
    for key in keys:
        for bin_, n in histograms.get(key, {}).items():
            out[bin_] = out.get(bin_, 0) + n
    return out


def reference(engine: sa.Engine, window: Window, by: str, limit: int | None) -> dict[str, Any]:
    """summarize as it was: every group's sums and histograms in memory, then the cut."""
    with engine.connect() as connection:
        total = read.totals(connection, window)
        e2e = read.exact(connection, window, "e2e", PERCENTILES)
        ttft = read.exact(connection, window, "ttft", (50,))
        e2e_by = read.histograms(connection, window, by, "e2e")
        ttft_by = read.histograms(connection, window, by, "ttft")
        parts = read.grouped(connection, window, by)
    kept, cut = ranked(parts, limit)
    groups = [{"key": k, **figures(s), **_latency(e2e_by.get(k), ttft_by.get(k))} for k, s in kept]
    others = None
    if cut:
        rest = _latency(_merged(e2e_by, cut), _merged(ttft_by, cut))
        others = {"groups": len(cut), **figures(read.total(parts[key] for key in cut)), **rest}
    exact = {"latency_p50_ms": e2e[50], "latency_p95_ms": e2e[95], "ttft_p50_ms": ttft[50]}
    return {
        **window.to_json(),
        "by": by,
        "totals": {**figures(total), **exact},
        "groups": groups,
        "groups_total": len(parts),
        "others": others,
        "percentiles": PERCENTILE_NOTE,
    }


def dashboard_reference(connection: sa.Connection, window: Window, by: str, limit: int) -> Any:
    parts = read.grouped(connection, window, by)
    kept, cut = ranked(parts, limit)
    others = {"groups": len(cut), **dashboard.figures(read.total(parts[k] for k in cut))} if cut else None
    listed = [{"key": key, **dashboard.figures(sums)} for key, sums in kept]
    return listed, others, dashboard.figures(read.total(parts.values()))


def windows() -> list[Window]:
    return [
        Window(),
        Window(START + timedelta(minutes=17), START + timedelta(days=2, hours=5, minutes=41)),
        Window(START + timedelta(hours=3), START + timedelta(days=2, hours=3), team="search-team"),
        Window(START + timedelta(hours=3), key_id="k2"),
        Window(START, START + timedelta(days=3), rollup=False),
    ]


def check(engine: sa.Engine) -> dict[str, Any]:
    found: dict[str, Any] = {}
    with engine.connect() as connection:
        for i, window in enumerate(windows()):
            for by in ("user", "customer", "model", "key"):
                for limit in (1, 7, 60, None):
                    answer = summarize(engine, window, by, limit)
                    assert answer == reference(engine, window, by, limit), (window, by, limit)
                    found[f"{i} {by} {limit}"] = answer
                got = dashboard.breakdown(connection, window, by, 7)
                assert got == dashboard_reference(connection, window, by, 7), (window, by)
    many = found["0 user 60"]
    assert many["groups_total"] > 200 and many["others"]["groups"] == many["groups_total"] - 60
    costs = [(g["cost_usd"], g["requests"]) for g in many["groups"]]
    assert len(set(costs)) < len(costs)  # ties, broken by the key
    assert None in {g["key"] for g in found["0 user None"]["groups"]}
    return found


def test_capped_breakdown_equals_ranking_every_group(tmp_path: Path) -> None:
    with sqlite_ledger(tmp_path / "b.db") as engine:
        fill(engine)
        check(engine)
    assert report.GROUP_LIMIT == 1000


@pytest.mark.integration
def test_capped_breakdown_on_postgres(pg_ledger: sa.Engine, tmp_path: Path) -> None:
    fill(pg_ledger)
    with sqlite_ledger(tmp_path / "b.db") as lite:
        fill(lite)
        assert check(pg_ledger) == check(lite)
