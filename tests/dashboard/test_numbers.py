"""Dashboard figures equal `margin report --json` (the CLI, on the same ledger) wherever they overlap."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from margin.cli import app
from margin.dashboard.queries import burn, window_for
from margin.ledger import db, rollup
from margin.ledger.measures import RELATIVE_ERROR
from margin.ledger.read import Window, grain_for, percentile
from margin.report.queries import summarize
from tests.dashboard.seed import REVENUE, seed
from tests.helpers import fake_settings, gateway

SHARED = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "unpriced_requests",
    "usd_per_1k_tokens",
    "energy_j",
    "co2e_g",
    "cache_hits",
    "cache_saved_usd",
    "routing_saved_usd",
)


def report(db_path: Path, *args: str) -> Any:
    result = CliRunner().invoke(app, ["report", "--db", str(db_path), "--since", "7d", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def shared(figures: dict[str, Any]) -> dict[str, Any]:
    return {key: figures[key] for key in SHARED}


def rebuild_rollups(db_path: Path) -> None:
    """Empty every rollup (as if rows had been edited by hand): `margin db rebuild-rollups` restores them, and
    the pages then show the same numbers (tested against the report's rows path below)."""
    result = CliRunner().invoke(app, ["db", "rebuild-rollups", "--db", str(db_path)])
    assert result.exit_code == 0 and "rollups rebuilt" in result.output, result.output


def rows_report(db_path: Path, by: str | None = None) -> Any:
    """The report's summary from ledger rows only (Window(rollup=False)), for the last 7 days."""
    engine = db.make_sync_engine(f"sqlite:///{db_path}")
    try:
        return summarize(engine, Window(datetime.now(UTC) - timedelta(days=7), rollup=False), by)
    finally:
        engine.dispose()


@pytest.mark.parametrize("incremental", [False, True], ids=["rebuilt", "incremental"])
async def test_totals_and_every_breakdown_match_the_report(db_path: Path, incremental: bool) -> None:
    made = seed(db_path)
    if not incremental:
        rebuild_rollups(db_path)
    headers = {"authorization": f"Bearer {made['admin']}"}
    async with gateway(fake_settings(db_path)) as gw:
        overview = (await gw.http.get("/dashboard/api/overview?since=7d", headers=headers)).json()
        hourly = (await gw.http.get("/dashboard/api/overview?since=24h", headers=headers)).json()
        pages = {
            by: (await gw.http.get(f"/dashboard/api/breakdown?by={by}", headers=headers)).json()
            for by in ("team", "feature", "customer", "model", "backend")
        }
        latency = (await gw.http.get("/dashboard/api/latency", headers=headers)).json()
    totals = report(db_path)["totals"]
    assert shared(overview["totals"]) == shared(totals) == shared(rows_report(db_path)["totals"])
    assert overview["totals"]["cost_usd"] == "0.013520000"  # the seed's hand sum (row 9 is outside 7d)
    assert overview["totals"]["unpriced_requests"] == 1 and overview["totals"]["cache_hits"] == 1
    day = CliRunner().invoke(app, ["report", "--db", str(db_path), "--since", "24h", "--json"])
    assert shared(hourly["totals"]) == shared(json.loads(day.output)["totals"])
    assert hourly["trend"]["unit"] == "hour"
    points = hourly["trend"]["points"]
    assert len(points) in (24, 25) and {p["bucket"][13:] for p in points} == {":00:00"}  # every hour, ISO start
    assert [p["requests"] for p in points if p["requests"]] == [7]  # the 7 recent rows; quiet hours are zeros
    assert len(overview["trend"]["points"]) == 8  # every day of the 7-day window (both ends partial)
    trend = overview["trend"]["points"]
    assert sum(p["requests"] for p in trend) == totals["requests"]
    assert sum(Decimal(p["cost_usd"]) for p in trend) == Decimal(totals["cost_usd"])
    for by, page in pages.items():
        expected = {g["key"]: shared(g) for g in report(db_path, "--by", by)["groups"]}
        assert {g["key"]: shared(g) for g in page["groups"]} == expected, by
        assert {g["key"]: shared(g) for g in rows_report(db_path, by)["groups"]} == expected, by
        assert [g["key"] for g in page["groups"]] == list(expected), by  # same order (cost, then requests)
    by_model = {g["key"]: g for g in report(db_path, "--by", "model")["groups"]}
    for model in latency["models"]:  # both from the latency histogram: the same bins, the same value
        figures = by_model[model["model"]]
        assert model["e2e_ms"]["p50"] == figures["latency_p50_ms"]
        assert model["e2e_ms"]["p95"] == figures["latency_p95_ms"]
        assert model["ttft_ms"]["p50"] == figures["ttft_p50_ms"]
    exact = {"fake-chat": [3.0, 50.0, 200.0, 250.0, 400.0], "priced": [900.0, 3000.0], "mystery": [150.0]}
    for model in latency["models"]:  # the seed's e2e values: the histogram is within 4.43 % of nearest rank
        assert model["e2e_ms"]["p50"] == pytest.approx(percentile(exact[model["model"]], 50), rel=RELATIVE_ERROR)
    assert latency["totals"] == {"requests": 8, "errors": 2, "error_rate_pct": 25.0}
    assert {(e["http_status"], e["error_code"]): e["requests"] for e in latency["errors"]} == {
        (502, "backend_error"): 1,
        (504, "timeout"): 1,
    }


@pytest.mark.parametrize("incremental", [False, True], ids=["rebuilt", "incremental"])
async def test_savings_and_backends(db_path: Path, incremental: bool) -> None:
    made = seed(db_path)
    if not incremental:
        rebuild_rollups(db_path)
    headers = {"authorization": f"Bearer {made['admin']}"}
    async with gateway(fake_settings(db_path)) as gw:
        savings = (await gw.http.get("/dashboard/api/savings", headers=headers)).json()
        backends = (await gw.http.get("/dashboard/api/backends", headers=headers)).json()
    assert savings["totals"]["cache_saved_usd"] == "0.001000000"
    assert savings["totals"]["routing_saved_usd"] == "0.001500000"
    assert savings["saved_usd"] == "0.002500000"
    # saved / (spent + saved) = 0.0025 / 0.01602
    assert savings["saved_pct"] == pytest.approx(15.61, abs=0.01)
    rows = {b["backend"]: b for b in backends["backends"]}
    assert rows["fake"]["requests"] == 4 and rows["fake"]["errors"] == 1  # the cache hit is no backend call
    assert rows["api"]["requests"] == 3 and rows["api"]["cost_usd"] == "0.002520000"
    assert rows["fake"]["busy_s"] == pytest.approx(0.72)  # 4 × 180 ms
    assert rows["fake"]["busy_pct"] == pytest.approx(0.72 / (7 * 86400) * 100, rel=1e-3)
    assert rows["fake"]["status"] == "ok" and rows["fake"]["breaker_open"] is False
    assert rows["fake"]["usd_per_hour"] == "3.60"


def test_burn_rate_and_exhaustion() -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    now = start + timedelta(days=10)
    end = datetime(2026, 12, 1, tzinfo=UTC)
    rate = burn(5_000, start, end, 20_000, now)
    assert rate["per_day"] == Decimal(500)
    assert rate["exhausts_at"] is None  # 15,000 left at 500/day = 30 days: after the reset on Dec 1
    fast = burn(10_000, start, end, 20_000, now)  # 1000/day, 10 days left → runs out on the 21st
    assert fast["exhausts_at"] == "2026-11-21T00:00+00:00"
    slow = burn(1_000, start, end, 20_000, now)  # 100/day: would last 190 more days, past the reset
    assert slow["exhausts_at"] is None
    assert burn(0, start, end, 20_000, now) == {"per_day": Decimal(0), "exhausts_at": None}
    assert burn(10, None, None, 20, now) == {"per_day": None, "exhausts_at": None}


@pytest.mark.parametrize("incremental", [False, True], ids=["rebuilt", "incremental"])
async def test_budgets_show_the_live_counters(db_path: Path, incremental: bool) -> None:
    made = seed(db_path)
    if not incremental:
        rebuild_rollups(db_path)
    budgets = [{"name": "search-month", "scope": {"kind": "team", "value": "search"}, "usd": "10", "period": "month"}]
    async with gateway(fake_settings(db_path, budgets=budgets)) as gw:
        chat = {"model": "fake-chat", "messages": [{"role": "user", "content": "hello there"}]}
        answer = await gw.http.post(
            "/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {made['search']}"}
        )
        assert answer.status_code == 200
        await gw.rows()
        headers = {"authorization": f"Bearer {made['admin']}"}
        page = (await gw.http.get("/dashboard/api/budgets", headers=headers)).json()["budgets"][0]
        live = (await gw.http.get("/admin/budgets", headers=headers)).json()["data"][0]
    assert page["counter_spent"] == live["spent"] and page["reserved"] == live["reserved"]
    assert page["spent"] == live["spent"]  # the ledger's sum agrees with the reconciled live counter
    spent = Decimal(page["spent"])
    assert spent >= Decimal("0.011")  # the month's seeded search spend, reconciled, plus this request
    assert page["used_pct"] == pytest.approx(float(spent / 10 * 100), abs=0.01)
    elapsed_days = (datetime.now(UTC) - datetime.fromisoformat(live["window_start"])).total_seconds() / 86400
    assert float(page["burn_per_day"]) == pytest.approx(float(spent) / elapsed_days, rel=0.01)


async def test_rollup_follows_new_rows_and_ignores_replays(db_path: Path) -> None:
    made = seed(db_path)
    headers = {"authorization": f"Bearer {made['admin']}"}
    async with gateway(fake_settings(db_path)) as gw:
        for content in ("one", "two", "one"):  # the fake backend is deterministic: the 3rd may be a cache hit
            chat = {"model": "priced", "messages": [{"role": "user", "content": content}], "temperature": 0}
            assert (await gw.http.post("/v1/chat/completions", json=chat, headers=headers)).status_code == 200
        rows = await gw.rows()
        replay = {k: v for k, v in rows[-1]._mapping.items() if k != "id"}
        gw.services.outbox.append(replay)  # a replayed settlement: ON CONFLICT DO NOTHING, no trigger
        await gw.services.outbox.flush()
        overview = (await gw.http.get("/dashboard/api/overview", headers=headers)).json()
        models = (await gw.http.get("/dashboard/api/breakdown?by=model", headers=headers)).json()
    engine = db.make_sync_engine(f"sqlite:///{db_path}")
    with engine.connect() as connection:
        rolled = connection.exec_driver_sql("SELECT sum(requests) FROM ledger_hourly").scalar_one()
        tagged, per_team = (
            connection.exec_driver_sql(
                f"SELECT sum(requests) FROM ledger_daily WHERE dim = 'customer' AND {t}"
            ).scalar()
            for t in ("team = '*'", "team <> '*'")  # a tag key's rows across every team, and per team
        )
    assert grain_for(window_for("7d"), ["team"], ["customer"]) == "hour"
    assert grain_for(window_for("7d"), ["customer"], ["customer"]) == "day"  # a rolled-up tag key
    assert grain_for(window_for("7d"), ["customer"], []) is None  # not rolled up: rows
    assert grain_for(window_for("7d", key_id="k1"), ["team"], []) is None  # one key's rows: rows
    engine.dispose()
    assert (
        rolled == tagged == per_team == len(rows)
    )  # every row once (the old one outside 7d included), the replay not at all
    assert shared(overview["totals"]) == shared(report(db_path)["totals"])
    assert overview["totals"]["requests"] == 8 + 3
    expected = {g["key"]: shared(g) for g in report(db_path, "--by", "model")["groups"]}
    assert {g["key"]: shared(g) for g in models["groups"]} == expected


def gross_margin_of(groups: list[dict[str, Any]]) -> dict[str, Any]:
    earning = [g for g in groups if g["revenue_usd"] is not None]
    revenue = sum(Decimal(g["revenue_usd"]) for g in earning)
    cost = sum(Decimal(g["cost_usd"]) for g in earning)
    return {
        "revenue_usd": f"{revenue:.9f}",
        "cost_usd": f"{cost:.9f}",
        "gross_margin": f"{(revenue - cost) / revenue:.6f}",
        "groups_with_revenue": len(earning),
    }


def report_view(db_path: Path, view: str, *args: str) -> Any:
    """`margin report --view VIEW --json` with the seed's revenue config."""
    config = db_path.parent / "revenue.yaml"
    config.write_text(yaml.safe_dump({"revenue": REVENUE}))
    argv = ["report", "--config", str(config), "--db", str(db_path), "--since", "7d", "--view", view, "--json"]
    result = CliRunner().invoke(app, [*argv, *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


async def test_margin_and_tasks_match_the_report_views(db_path: Path) -> None:
    made = seed(db_path)
    admin = {"authorization": f"Bearer {made['admin']}"}
    async with gateway(fake_settings(db_path, revenue=REVENUE)) as gw:
        page = (await gw.http.get("/dashboard/api/margin", headers=admin)).json()
        by_customer = (await gw.http.get("/dashboard/api/margin?by=customer", headers=admin)).json()
        overview = (await gw.http.get("/dashboard/api/overview", headers=admin)).json()
        team = {"authorization": f"Bearer {made['search']}"}
        team_page = (await gw.http.get("/dashboard/api/margin", headers=team)).json()
        team_overview = (await gw.http.get("/dashboard/api/overview", headers=team)).json()
    margin = report_view(db_path, "margin")
    assert page["margins"]["groups"] == margin["groups"]
    assert page["margins"]["active_customers"] == margin["active_customers"]
    assert by_customer["margins"]["groups"] == report_view(db_path, "margin", "--by", "customer")["groups"]
    assert page["tasks"] == report_view(db_path, "tasks")["groups"][0]
    assert page["tasks"]["cost_per_successful_task_usd"] == "0.003250000"  # ($0.001 + $0.003 + $0.0025) / 2
    # qa earns 5 ok calls × $0.01, copy 1 × $0.002; they cost $0.011 and $0.00252: (0.052 − 0.01352) / 0.052
    assert page["overall"] == {
        "revenue_usd": "0.052000000",
        "cost_usd": "0.013520000",
        "gross_margin": "0.740000",
        "groups_with_revenue": 2,
    }
    assert overview["gross_margin"] == page["overall"]
    # a team key sees its own P&L: the report's team view, its own rows only (search: rows 1, 2, 5, 6, 8)
    own = report_view(db_path, "margin", "--team", "search")
    assert team_page["margins"]["groups"] == own["groups"] and own["team"] == "search"
    assert team_page["tasks"] == report_view(db_path, "tasks", "--team", "search")["groups"][0]
    [qa] = own["groups"]
    assert (qa["key"], qa["requests"], qa["cost_usd"], qa["revenue_usd"]) == (
        "qa",
        5,
        "0.011000000",
        "0.040000000",
    )  # 4 ok calls
    assert team_overview["gross_margin"] == gross_margin_of(own["groups"])


async def test_savings_page_shows_the_batch_discount_and_carbon_aware_routes(db_path: Path) -> None:
    import sqlalchemy as sa

    from margin.ledger.models import ledger
    from tests.dashboard.seed import row

    made = seed(db_path)
    engine = db.make_sync_engine(f"sqlite:///{db_path}")
    extra = [
        row(900, batch_id="batch_a", cost_nanousd=500_000, discount_nanousd=500_000),
        row(
            901,
            route_pref="carbon",
            route_default="fake-chat-us",
            cost_nanousd=2_000_000,
            default_cost_nanousd=1_500_000,
            co2e_g=0.5,
            co2e_ng=500_000_000,
            default_co2e_g=2.0,
        ),
    ]
    with engine.begin() as connection:  # rows written by hand: rebuild the rollups (margin db rebuild-rollups)
        columns = {name for r in extra for name in r}
        connection.execute(sa.insert(ledger), [{name: r.get(name) for name in columns} for r in extra])
        rollup.rebuild(connection)
    engine.dispose()
    headers = {"authorization": f"Bearer {made['admin']}"}
    async with gateway(fake_settings(db_path)) as gw:
        data = (await gw.http.get("/dashboard/api/savings", headers=headers)).json()
        page = (await gw.http.get("/dashboard/savings", headers=headers)).text
    levers = data["levers"]
    assert (levers["batch_requests"], levers["batch_discount_usd"]) == (1, "0.000500000")
    assert (levers["preferred_requests"], levers["preferred_moved"]) == (1, 1)
    assert levers["preferred_saved_co2e_g"] == 1.5 and levers["preferred_saved_usd"] == "-0.000500000"
    assert data["saved_usd"] == "0.002500000"  # cache 0.001 + routing 0.0015 + discount 0.0005 − 0.0005
    assert 'data-k="batch_discount_usd" data-v="0.000500000"' in page
    assert 'data-k="preferred_saved_co2e_g" data-v="1.5"' in page
