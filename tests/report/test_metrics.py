"""Every report metric on the hand-built ledger of tests/report/ledgers.py, against hand-computed answers."""

from __future__ import annotations

import math
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from margin.config import Settings
from margin.ledger import db
from margin.ledger.measures import BIN_SCALE, RELATIVE_ERROR, bin_bounds, representative
from margin.report.business import RevenueLine, load_revenue_csv, margins, tasks
from margin.report.metrics import carbon, savings, timeseries
from margin.report.queries import Window, percentile, summarize
from margin.report.utilization import utilization
from tests.helpers import fake_settings
from tests.report.ledgers import MILLI, ROWS, at, load, row


@pytest.fixture(params=[True, False], ids=["rollup", "rows"])
def rollup(request: pytest.FixtureRequest) -> bool:
    """Every metric is checked from the hourly rollup and from the ledger rows."""
    return bool(request.param)


def settings(tmp_path: Path) -> Settings:
    revenue = {
        "features": {
            "search": {"price_per_call": "0.002"},
            "chat": {"price_per_seat_month": "30", "seats": 2},
        }
    }
    return fake_settings(tmp_path / "unused.db", revenue=revenue)


def test_tasks_cost_per_successful_task(engine: sa.Engine, rollup: bool) -> None:
    november = Window(at(1), at(16), rollup=rollup)
    [total] = tasks(engine, november)
    # t1 (r1,r2) succeeds via r2; t2 (r3,r7) graded, failed; t3 (r4) ungraded; r5 and r6 are tasks of one,
    # r6 succeeded. Cost: 1+3+2+NULL+0+1+0 milli-$; graded tasks t1,t2,r6 cost 4+2+1.
    assert (total.tasks, total.graded_tasks, total.successful_tasks) == (5, 3, 2)
    assert total.cost_usd == Decimal("0.007") and total.graded_cost_usd == Decimal("0.007")
    assert total.cost_per_successful_task_usd == Decimal("0.0035")
    assert total.unpriced_requests == 1
    assert total.mean_score == pytest.approx(0.55)
    assert total.value_usd == Decimal("0.05")
    assert total.success_rate == pytest.approx(2 / 3)
    by_feature = {t.key: t for t in tasks(engine, november, by="feature")}
    assert by_feature["search"].tasks == 2 and by_feature["search"].successful_tasks == 1
    assert by_feature["search"].cost_per_successful_task_usd == Decimal("0.006")
    assert by_feature["chat"].cost_per_successful_task_usd == Decimal("0.001")  # r6 only succeeded; r4 ungraded
    empty = tasks(engine, Window(at(20), at(21), rollup=rollup))
    assert empty[0].tasks == 0 and empty[0].cost_per_successful_task_usd is None


def test_gross_margin_and_attach_rate(engine: sa.Engine, tmp_path: Path, rollup: bool) -> None:
    november = Window(at(1), at(16), rollup=rollup)  # 15 days
    lines = [RevenueLine("search", None, Decimal("1.00"))]
    report = margins(engine, november, settings(tmp_path).revenue, lines)
    rows = {r.key: r for r in report.rows}
    assert report.active_customers == 3  # acme, globex, initech
    search, chat = rows["search"], rows["chat"]
    assert (search.requests, search.ok_requests, search.customers) == (4, 3, 2)
    assert search.cost_usd == Decimal("0.006")
    assert search.revenue_usd == Decimal("1.006")  # 3 ok calls × 0.002 + 1.00 imported
    assert search.gross_margin == (Decimal("1.006") - Decimal("0.006")) / Decimal("1.006")
    assert search.attach_rate == pytest.approx(2 / 3)
    assert chat.revenue_usd == Decimal(30)  # 2 seats × $30/month × 15/30 months
    assert chat.cost_usd == Decimal("0.001") and chat.unpriced_requests == 1
    assert chat.gross_margin == Decimal("29.999") / Decimal(30)
    assert [r.key for r in report.rows] == ["search", "chat"]  # biggest cost first
    by_customer = {r.key: r for r in margins(engine, november, settings(tmp_path).revenue, by="customer").rows}
    assert by_customer["acme"].revenue_usd is None and by_customer["acme"].gross_margin is None
    assert by_customer["acme"].cost_usd == Decimal("0.005")


def test_a_capped_margin_report_lists_the_costliest_groups_and_every_earning_one(
    engine: sa.Engine, tmp_path: Path, rollup: bool
) -> None:
    """`limit` (the dashboard's, whose callers name features and customers: a group per request): the first
    groups by cost, ranked and cut in SQL, and each group with revenue wherever its cost ranks it (chat costs
    less than search: past a limit of 1 it is read alone, and its revenue, customers and margin are as uncapped);
    the rest added up under `others`, so the groups and `others` still add up."""
    november, revenue = Window(at(1), at(16), rollup=rollup), settings(tmp_path).revenue
    every, capped = margins(engine, november, revenue), margins(engine, november, revenue, limit=1)
    assert capped.rows == every.rows and capped.active_customers == every.active_customers == 3
    assert capped.to_json()["groups_total"] == 2 and capped.to_json()["others"] is None
    uncapped = margins(engine, november, revenue, by="customer").to_json()
    found = margins(engine, november, revenue, by="customer", limit=1).to_json()
    assert [g["key"] for g in found["groups"]] == ["acme"] and found["groups"][0] == uncapped["groups"][0]
    others = found["others"]
    assert found["groups_total"] == uncapped["groups_total"] == 3 and others["groups"] == 2
    rest = uncapped["groups"][1:]
    for name in ("requests", "ok_requests", "unpriced_requests"):
        assert others[name] == sum(g[name] for g in rest), name
    assert Decimal(others["cost_usd"]) == sum(Decimal(g["cost_usd"]) for g in rest) == Decimal("0.002")


def test_revenue_of_a_feature_without_traffic_in_the_window_is_a_row(
    engine: sa.Engine, tmp_path: Path, rollup: bool
) -> None:
    quiet = Window(at(20), at(21), rollup=rollup)  # one day with no requests: both were left out of the report
    lines = [RevenueLine("docs", None, Decimal("5.00"))]
    rows = {r.key: r for r in margins(engine, quiet, settings(tmp_path).revenue, lines).rows}
    assert set(rows) == {"chat", "docs"}  # search is priced per call: no calls, no revenue, no row
    assert rows["chat"].revenue_usd == Decimal(2)  # 2 seats × $30/month × 1/30 month
    assert rows["docs"].revenue_usd == Decimal("5.00") and rows["docs"].cost_usd == 0
    assert rows["docs"].requests == 0 and rows["docs"].gross_margin == 1
    for narrowed in (replace(quiet, key_id="k1"), replace(quiet, org=("acme",))):  # a key's or an org's view
        assert not margins(engine, narrowed, settings(tmp_path).revenue, lines).rows  # not the operator's revenue


def test_groups_total_counts_the_same_capped_or_not(engine: sa.Engine, tmp_path: Path, rollup: bool) -> None:
    """`groups_total` is every row and every group under `others`, capped or not. Before, uncapped it was
    `len(rows)` (the revenue rows without traffic too) and capped the groups with requests: the quiet day's
    capped report said 0 of its 2 rows; and `others` counted the quiet rows as listed groups of its own
    (a customer's CSV revenue without traffic: 1 group under `others` where 2 were)."""
    quiet, november = Window(at(20), at(21), rollup=rollup), Window(at(1), at(16), rollup=rollup)
    revenue = settings(tmp_path).revenue
    lines = [RevenueLine("docs", None, Decimal("5.00")), RevenueLine(None, "zeta", Decimal("5.00"))]
    for window, by in ((quiet, "feature"), (november, "feature"), (november, "customer")):
        every = margins(engine, window, revenue, lines, by=by).to_json()
        capped = margins(engine, window, revenue, lines, by=by, limit=1).to_json()
        assert every["others"] is None and every["groups_total"] == len(every["groups"]), (window, by)
        left_out = capped["others"]["groups"] if capped["others"] else 0
        assert capped["groups_total"] == every["groups_total"] == len(capped["groups"]) + left_out, (window, by)
    assert left_out == 2 and [g["key"] for g in capped["groups"]] == ["acme", "zeta"]  # globex and initech


def _read(engine: sa.Engine, window: Window, revenue: Any, limit: int | None) -> tuple[int, Any]:
    """The SQL statements a margin report by customer runs, and the report."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        report = margins(engine, window, revenue, by="customer", limit=limit)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    return len(seen), report


def test_a_capped_margin_report_reads_its_revenue_rules_together(
    engine: sa.Engine, tmp_path: Path, rollup: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The groups that earn revenue past the cap are read by one grouped query (`IN` their names, a chunk at a
    time), not one query per rule: with 300 `revenue:` rules the overview card (`limit=1`) ran ~300 reads per
    load, one before. The report is the same."""
    november = Window(at(1), at(16), rollup=rollup)

    def revenue(rules: int) -> Any:
        names = [f"c{n:03d}" for n in range(rules)] + ["globex", "initech"]  # c… sort first, none has traffic
        customers = {name: {"price_per_call": "0.5"} for name in names}
        return fake_settings(tmp_path / "unused.db", revenue={"customers": customers}).revenue

    few, many = _read(engine, november, revenue(2), 1), _read(engine, november, revenue(300), 1)
    assert few[0] == many[0]  # before: 12 and 608 (two for each of the 298 more rules)
    every = margins(engine, november, revenue(300), by="customer")
    assert [row.key for row in many[1].rows] == ["acme", "globex", "initech"]  # acme by cost, the rest by revenue
    assert many[1].rows == [row for row in every.rows if row.key in ("acme", "globex", "initech")]
    assert many[1].rows[1].revenue_usd  # they earn: read, not left out
    monkeypatch.setattr("margin.report.business.EARNING_CHUNK", 7)  # many chunks: the same report
    assert _read(engine, november, revenue(300), 1)[1] == many[1]


def test_revenue_csv(tmp_path: Path) -> None:
    path = tmp_path / "rev.csv"
    path.write_text("feature,customer,usd\nsearch,,1.50\n,acme,2\n")
    assert load_revenue_csv(path) == [
        RevenueLine("search", None, Decimal("1.50")),
        RevenueLine(None, "acme", Decimal(2)),
    ]
    path.write_text("feature,usd\nsearch,lots\n")
    with pytest.raises(Exception, match="not a number"):
        load_revenue_csv(path)


def test_savings_counts_cache_and_routing_not_quantization(engine: sa.Engine, rollup: bool) -> None:
    november = Window(at(1), at(16), rollup=rollup)  # 15 days
    found = savings(engine, november)
    assert found.actual_cost_usd == Decimal("0.007")
    assert (found.cache_hits, found.cache_saved_usd) == (1, Decimal("0.0005"))
    assert (found.routed_requests, found.routing_saved_usd) == (1, Decimal("0.004"))
    assert found.counterfactual_cost_usd == Decimal("0.0115")
    assert found.quantization_saved_usd is None and "not measured" in found.to_json()["quantization_note"]


def test_timeseries_per_day_and_hour(engine: sa.Engine, rollup: bool) -> None:
    november = Window(at(1), at(16), rollup=rollup)  # 15 days
    days = timeseries(engine, november, "day")
    assert [p.start for p in days] == ["2026-11-02T00:00:00", "2026-11-03T00:00:00"]
    first, second = days
    assert (first.requests, first.cost_usd) == (3, Decimal("0.006"))
    assert first.usd_per_1k_tokens == Decimal("0.006") / 550 * 1000
    assert (second.requests, second.unpriced_requests, second.cost_usd) == (4, 1, Decimal("0.001"))
    assert second.usd_per_1k_tokens == Decimal("0.001") / 80 * 1000  # r4's unpriced tokens left out
    assert second.cache_saved_usd == Decimal("0.0005")
    hours = timeseries(engine, november, "hour")
    assert len(hours) == 7 and hours[0].start == "2026-11-02T00:00:00"


def test_carbon_by_region(engine: sa.Engine, rollup: bool) -> None:
    november = Window(at(1), at(16), rollup=rollup)  # 15 days
    rows = {c.key: c for c in carbon(engine, november)}
    eu = rows["eu"]
    assert (eu.requests, eu.tokens, eu.kwh, eu.co2e_g, eu.modelled_requests) == (1, 100, 1.0, 56.0, 1)
    assert eu.co2e_g_per_1k_tokens == pytest.approx(560.0)
    assert rows[None].unknown_requests == 6 and rows[None].co2e_g == 0


def test_utilization_and_idle_cost(engine: sa.Engine, tmp_path: Path, rollup: bool) -> None:
    extra = row("r8", backend="fake", busy_ms=None, backend_ms=1000.0, cost_nanousd=MILLI, created_at=at(2, 0, 40))
    load(engine, rows=[*ROWS, extra])
    hour = Window(at(2, 0), at(2, 1), rollup=rollup)
    [fake] = utilization(engine, hour, settings(tmp_path))
    assert fake.backend == "fake" and fake.requests == 2
    assert (fake.provisioned_s, fake.busy_s, fake.approx_busy_rows) == (3600.0, 3.0, 1)
    assert fake.utilization == pytest.approx(3 / 3600)
    assert fake.request_cost_usd == Decimal("0.003")
    assert fake.idle_cost_usd == Decimal("3.60") * Decimal(3597) / Decimal(3600)
    open_start = utilization(engine, Window(None, at(2, 1), rollup=rollup), settings(tmp_path))[0]
    assert open_start.provisioned_s == 1800.0  # from the backend's first row (00:30) to the window's end
    for narrowed in (replace(hour, team="search-team"), replace(hour, key_id="k1"), replace(hour, org=(None,))):
        [part] = utilization(engine, narrowed, settings(tmp_path))  # idle time is every team's: nobody's own
        assert part.idle_cost_usd is None and part.provisioned_s == 3600.0  # (a key's view had all of it)


def test_utilization_counts_no_time_after_now(engine: sa.Engine, tmp_path: Path, rollup: bool) -> None:
    """A window that ends after now (this month, asked on its 7th) is provisioned until now: its later hours have
    not happened, so they are neither idle cost nor a share of the utilization (they were: the whole month's
    idle TCO on its 7th, and a quarter of the utilization)."""
    extra = row("r8", backend="fake", busy_ms=None, backend_ms=1000.0, cost_nanousd=MILLI, created_at=at(2, 0, 40))
    load(engine, rows=[*ROWS, extra])
    two_hours = Window(at(2, 0), at(2, 2), rollup=rollup)
    [fake] = utilization(engine, two_hours, settings(tmp_path), now=at(2, 1))
    assert (fake.provisioned_s, fake.busy_s) == (3600.0, 3.0)
    assert fake.idle_cost_usd == Decimal("3.60") * Decimal(3597) / Decimal(3600)
    [later] = utilization(engine, Window(at(3), at(4), rollup=rollup), settings(tmp_path), now=at(2, 1))
    assert later.provisioned_s == 0.0 and later.idle_cost_usd == 0 and later.utilization is None


def test_seat_revenue_is_the_operators_not_a_keys(engine: sa.Engine, tmp_path: Path, rollup: bool) -> None:
    """Per-seat revenue is left out of a team's, a key's or an org's P&L (a key without a team was credited
    the whole operator's seats: `$30` against its own `$0.001`)."""
    november = Window(at(1), at(16), rollup=rollup)
    parts = (replace(november, team="search-team"), replace(november, key_id="k1"), replace(november, org=(None,)))
    for narrowed in (november, *parts):  # every row is the key k1's, of search-team, in no org
        report = margins(engine, narrowed, settings(tmp_path).revenue)
        chat = next(r for r in report.rows if r.key == "chat")
        assert chat.cost_usd == Decimal("0.001")
        seats = report.to_json()["seat_revenue"]
        if narrowed is november:
            assert chat.revenue_usd == Decimal(30) and seats == "prorated over the window"
        else:
            assert not chat.revenue_usd and seats == "not attributable to a team: left out", narrowed


def test_seat_revenue_is_not_earned_after_now(engine: sa.Engine, tmp_path: Path, rollup: bool) -> None:
    """Seats are prorated over the part of the window that has happened: a month asked on its 8th at noon is
    7.5 days of seats, against 7.5 days of cost (it was the whole month's revenue: a margin far too high)."""
    november = Window(at(1), at(16), rollup=rollup)  # 15 days: $30 of chat seats once they have all passed
    report = margins(engine, november, settings(tmp_path).revenue, now=at(8, 12))
    chat = next(r for r in report.rows if r.key == "chat")
    assert chat.revenue_usd == Decimal(15) and report.window_seconds == Decimal(7.5 * 86400)


def test_summary_unchanged_by_new_rows(engine: sa.Engine, rollup: bool) -> None:
    november = Window(at(1), at(16), rollup=rollup)  # 15 days
    totals = summarize(engine, november)["totals"]
    assert totals["requests"] == 7 and totals["errors"] == 1 and totals["unpriced_requests"] == 1
    assert Decimal(totals["cost_usd"]) == Decimal("0.007")


def test_latency_percentiles_exact_totals_and_bounded_groups(tmp_path: Path, rollup: bool) -> None:
    """Totals: exact nearest rank (the histogram finds the bin, an index walk the value). Groups: the
    histogram's bin middle, within measures.RELATIVE_ERROR of the exact value. Rollup = rows."""
    url = f"sqlite:///{tmp_path / 'p.db'}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    e2e = [float((n * 37) % 101) for n in range(1, 42)]  # 41 distinct values, shuffled, one of them 0 ms
    rows = [
        row(f"p{n}", e2e_ms=v, ttft_ms=None if n % 3 else v / 2, tags={"feature": "a"} if n % 2 else {},
            created_at=at(2 + n % 3, n % 24, n))
        for n, v in enumerate(e2e)
    ]  # fmt: skip
    load(engine, rows=rows, outcomes=False)
    found = summarize(engine, Window(at(1), at(6, 7, 30), rollup=rollup), "feature")
    engine.dispose()
    ttfts = sorted(v / 2 for n, v in enumerate(e2e) if n % 3 == 0)
    assert found["totals"]["latency_p50_ms"] == percentile(sorted(e2e), 50)
    assert found["totals"]["latency_p95_ms"] == percentile(sorted(e2e), 95)
    assert found["totals"]["ttft_p50_ms"] == percentile(ttfts, 50)
    groups = {g["key"]: g for g in found["groups"]}
    untagged = sorted(v for n, v in enumerate(e2e) if n % 2 == 0)  # the NULL feature group
    tagged = sorted(v for n, v in enumerate(e2e) if n % 2)
    close: dict[str, Any] = {"rel": RELATIVE_ERROR, "abs": 1e-9}
    assert groups[None]["latency_p95_ms"] == pytest.approx(percentile(untagged, 95), **close)
    assert groups["a"]["latency_p50_ms"] == pytest.approx(percentile(tagged, 50), **close)
    tagged_ttft = sorted(v / 2 for n, v in enumerate(e2e) if n % 2 and n % 3 == 0)
    assert groups["a"]["ttft_p50_ms"] == pytest.approx(percentile(tagged_ttft, 50), **close)
    assert "exact" in found["percentiles"]


def test_histogram_bins_bound_the_error() -> None:
    for value in (0.013, 0.5, 1.0, 2.0, 7.77, 99.9, 100.0, 1234.5, 60_000.0):
        bin_ = math.floor(math.log(value) * BIN_SCALE)
        low, high = bin_bounds(bin_)
        assert low <= value * (1 + 1e-12) and value < high * (1 + 1e-12)
        assert abs(representative(bin_) / value - 1) <= RELATIVE_ERROR + 1e-12
