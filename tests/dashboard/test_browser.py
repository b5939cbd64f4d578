"""The dashboard in a real browser (headless Debian Chromium via playwright): log in through the form, visit
every page, check the numbers shown against `margin report --json`, and save a screenshot of each page."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from typer.testing import CliRunner

from margin.cli import app
from margin.economics.money import from_nanousd, human_usd, usd_str
from margin.governance.admission import window
from tests.dashboard.conftest import LiveDashboard
from tests.dashboard.seed import ROWS
from tests.dashboard.test_numbers import report_view

KPIS = ("cost_usd", "requests", "errors", "input_tokens", "output_tokens", "usd_per_1k_tokens", "cache_hits")


@pytest.fixture(scope="module")
def reports(live_dashboard: LiveDashboard) -> dict[str | None, Any]:
    """`margin report --since 7d --json [--by X]` on the live gateway's ledger, run once per grouping."""
    out: dict[str | None, Any] = {}
    for by in (None, "team", "feature", "customer", "model"):
        args = ["report", "--db", str(live_dashboard.db_path), "--since", "7d", "--json"]
        result = CliRunner().invoke(app, [*args, "--by", by] if by else args)
        assert result.exit_code == 0, result.output
        out[by] = json.loads(result.output)
    return out


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    fresh = browser.new_context(viewport={"width": 1280, "height": 900})
    problems: list[str] = []  # console errors, e.g. a Content-Security-Policy violation or a missing asset
    fresh.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    try:
        yield fresh
    finally:
        fresh.close()
    expected = ("status of 401", "status of 403")  # the refusals the tests provoke (and assert) on purpose
    assert [p for p in problems if not any(code in p for code in expected)] == [], problems


def login(context: Any, live: LiveDashboard, who: str, path: str = "/dashboard") -> Any:
    page = context.new_page()
    page.goto(live.url + path)
    assert "/dashboard/login" in page.url  # not logged in yet: the form, not the data
    page.fill("#key", live.keys[who])
    page.click("#login")
    page.wait_for_load_state()
    assert page.url.startswith(live.url + path), page.url
    return page


def shown(scope: Any, field: str) -> tuple[str, str]:
    """(exact value in data-v, the text a person sees) of the first figure `field` inside `scope`."""
    element = scope.locator(f'[data-k="{field}"]').first
    return element.get_attribute("data-v") or "", element.inner_text().strip()


def screenshot(page: Any, live: LiveDashboard, name: str) -> None:
    path = live.artifacts / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5_000, path  # a real rendering, not an empty image


def test_admin_overview_matches_the_report(
    context: Any, live_dashboard: LiveDashboard, reports: dict[str | None, Any]
) -> None:
    page = login(context, live_dashboard, "admin")
    totals = reports[None]["totals"]
    kpis = page.locator("#kpis")
    for field in KPIS:
        exact, text = shown(kpis, field)
        assert exact == str(totals[field]), field
        if field.endswith("usd") or field == "usd_per_1k_tokens":
            assert text == human_usd(totals[field]), field
        else:
            assert text == f"{totals[field]:,}", field
    assert shown(kpis, "cost_usd")[1] == "$0.0135"  # the seed's hand sum: $0.01352
    assert shown(kpis, "saved_usd") == ("0.002500000", "$0.00250")  # cache $0.001 + routing $0.0015
    assert float(shown(kpis, "energy_j")[0]) == totals["energy_j"]
    assert float(shown(kpis, "co2e_g")[0]) == totals["co2e_g"]
    assert page.locator("svg.chart rect.bar").count() == 16  # 8 days of the window × (spend, requests)
    assert page.locator("#viewer").inner_text().startswith("admin")
    assert shown(page.locator("#gross-margin"), "gross_margin") == ("0.740000", "74.00 %")
    screenshot(page, live_dashboard, "overview")


def test_admin_sees_every_page(context: Any, live_dashboard: LiveDashboard, reports: dict[str | None, Any]) -> None:
    page = login(context, live_dashboard, "admin")
    for by in ("team", "feature", "customer", "model"):
        page.click("#nav-breakdown")
        page.click(f"#by-{by}")
        page.wait_for_load_state()
        for group in reports[by]["groups"]:
            key = "(none)" if group["key"] is None else group["key"]
            row = page.locator(f'#breakdown tr[data-key="{key}"]')
            assert shown(row, "cost_usd") == (group["cost_usd"], human_usd(group["cost_usd"])), (by, key)
            assert shown(row, "requests")[0] == str(group["requests"]), (by, key)
            assert shown(row, "usd_per_1k_tokens")[0] == (group["usd_per_1k_tokens"] or ""), (by, key)
        screenshot(page, live_dashboard, f"breakdown-{by}")

    page.click("#nav-latency")
    by_model = {g["key"]: g for g in reports["model"]["groups"]}
    row = page.locator('#latency tr[data-key="fake-chat"]')
    assert float(shown(row, "e2e_ms_p50")[0]) == by_model["fake-chat"]["latency_p50_ms"]
    assert float(shown(row, "e2e_ms_p95")[0]) == by_model["fake-chat"]["latency_p95_ms"]
    assert page.locator('#errors tr[data-key="504:timeout"] [data-k="requests"]').inner_text() == "1"
    screenshot(page, live_dashboard, "latency")

    page.click("#nav-savings")
    totals = reports[None]["totals"]
    assert shown(page.locator("#kpis"), "cache_saved_usd")[0] == totals["cache_saved_usd"]
    assert shown(page.locator("#kpis"), "routing_saved_usd")[0] == totals["routing_saved_usd"]
    screenshot(page, live_dashboard, "savings")

    page.click("#nav-budgets")
    assert page.locator("#budgets tr[data-key]").count() == 2
    search_budget = page.locator('#budgets tr[data-key="search-month"]')
    assert shown(search_budget, "limit") == ("10", "$10.00")
    start, end = window("month", datetime.now(UTC))
    expected = sum(
        r["cost_nanousd"] or 0
        for r in ROWS
        if r["team"] == "search" and r["kind"] == "request" and start <= r["created_at"] < end
    )
    assert shown(search_budget, "spent")[0] == usd_str(from_nanousd(expected))
    screenshot(page, live_dashboard, "budgets")

    page.click("#nav-margin")
    margin = report_view(live_dashboard.db_path, "margin")
    for group in margin["groups"]:
        row = page.locator(f'#margins tr[data-key="{group["key"]}"]')
        assert shown(row, "gross_margin")[0] == group["gross_margin"], group["key"]
        assert shown(row, "revenue_usd")[0] == group["revenue_usd"], group["key"]
    assert shown(page.locator("#kpis"), "gross_margin") == ("0.740000", "74.00 %")
    assert shown(page.locator("#kpis"), "cost_per_successful_task_usd")[1] == "$0.00325"
    screenshot(page, live_dashboard, "margin")

    page.click("#nav-backends")
    fake = page.locator('#backends tr[data-key="fake"]')
    assert shown(fake, "status") == ("ok", "ok")
    assert shown(fake, "requests")[0] == "4"
    screenshot(page, live_dashboard, "backends")


def test_team_key_sees_its_team_only(
    context: Any, live_dashboard: LiveDashboard, reports: dict[str | None, Any]
) -> None:
    page = login(context, live_dashboard, "search", "/dashboard/breakdown")
    search = next(g for g in reports["team"]["groups"] if g["key"] == "search")
    assert page.locator("#by-team").count() == 0  # no cross-team table offered
    assert page.locator("#nav-margin").count() == 0
    assert [r.get_attribute("data-key") for r in page.locator("#breakdown tbody tr").all()] == ["fake-chat", "total"]
    total = page.locator('#breakdown tr[data-key="total"]')
    assert shown(total, "cost_usd")[0] == search["cost_usd"]
    assert shown(total, "requests")[0] == str(search["requests"])
    page.click("#nav-overview")
    assert page.locator("h1").inner_text() == "Overview · team search"
    assert shown(page.locator("#kpis"), "cost_usd")[0] == search["cost_usd"]
    screenshot(page, live_dashboard, "team-overview")
    response = page.goto(live_dashboard.url + "/dashboard/breakdown?by=team")
    assert response.status == 403
    assert "needs an admin key" in page.locator("#page-error").inner_text()


def test_wrong_key_stays_on_the_login_form(context: Any, live_dashboard: LiveDashboard) -> None:
    page = context.new_page()
    page.goto(live_dashboard.url + "/dashboard/latency")
    page.fill("#key", "mgn_deadbeef_not-a-key")
    page.click("#login")
    assert "invalid or revoked" in page.locator("#login-error").inner_text()
    assert context.cookies() == []
    screenshot(page, live_dashboard, "login-error")
