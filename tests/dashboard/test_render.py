"""Rendering details: escaping of ledger values, SVG charts, security headers, the stylesheet."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from margin.dashboard.charts import bar_chart, meter
from margin.ledger import db, ingest
from tests.dashboard.seed import REVENUE, row, seed
from tests.helpers import fake_settings, gateway

NASTY = '<script>alert("x")</script>'


async def test_ledger_values_are_escaped(db_path: Path) -> None:
    made = seed(db_path)
    engine = db.make_sync_engine(f"sqlite:///{db_path}")
    with engine.begin() as connection:
        ingest.ingest_batch(connection, [row(100, team=NASTY, tags={"feature": NASTY})])
    engine.dispose()
    headers = {"authorization": f"Bearer {made['admin']}"}
    async with gateway(fake_settings(db_path)) as gw:
        for by in ("team", "feature"):
            page = await gw.http.get(f"/dashboard/breakdown?by={by}", headers=headers)
            assert page.status_code == 200
            assert NASTY not in page.text
            assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text
        css = await gw.http.get("/dashboard/static/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert b"@import" not in css.content and b"url(" not in css.content  # nothing fetched from elsewhere


async def test_a_backend_in_the_ledger_but_no_longer_configured_is_shown(db_path: Path) -> None:
    """Rows of a backend since removed from the config (a renamed or retired upstream): `/dashboard/backends`
    was a 500 (its template read `usd_per_hour`, which only a configured backend's health had). It is listed,
    `not configured`, with its requests."""
    made = seed(db_path)
    engine = db.make_sync_engine(f"sqlite:///{db_path}")
    with engine.begin() as connection:
        ingest.ingest_batch(connection, [row(101, backend="retired-upstream")])
    engine.dispose()
    headers = {"authorization": f"Bearer {made['admin']}"}
    async with gateway(fake_settings(db_path)) as gw:
        page = await gw.http.get("/dashboard/backends", headers=headers)
        listed = await gw.http.get("/dashboard/api/backends", headers=headers)
    assert page.status_code == 200, page.text[:300]
    assert "retired-upstream" in page.text and "not configured" in page.text
    assert listed.status_code == 200, listed.text[:300]
    retired = next(b for b in listed.json()["backends"] if b["backend"] == "retired-upstream")
    assert (retired["status"], retired["requests"], retired["usd_per_hour"]) == ("not configured", 1, None)


def test_bar_chart_and_meter() -> None:
    svg = bar_chart("Spend <per> day", [("2026-11-25", 1.0, "$1.00"), ("2026-11-26", 3.0, "$3.00")])
    assert svg.count("<rect") == 2
    assert "Spend &lt;per&gt; day" in svg and "<per>" not in svg
    assert ">$3.00</text>" in svg  # the axis shows the largest bar's exact label
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)"', svg)]
    assert heights[1] == pytest.approx(3 * heights[0], abs=0.2)  # drawn to 0.1 px
    hourly = bar_chart("x", [("2026-11-26T08:00:00", 0.0, "0")])
    assert ">08h</text>" in hourly and 'height="0.0"' in hourly  # all zero: no division by zero
    assert ">11-26</text>" in bar_chart("x", [("2026-11-26T00:00:00", 1.0, "1")])  # a day (or midnight)
    assert "No data" in bar_chart("x", [])
    assert 'width="100.0"' in meter(250.0) and "hot" in meter(95.0) and "ok" in meter(10.0)
    assert meter(None) == ""


async def test_html_tables_show_the_costliest_groups_and_the_json_every_one(db_path: Path) -> None:
    """Feature and customer tags are the caller's: a team key that sent 10,000 requests, each with its own
    `x-margin-tags: feature=…`, made `/dashboard/breakdown?by=feature` render 10,000 rows (8.6 MiB) on the
    event loop, 0.72-0.77 s each time it was asked. The HTML tables show the `HTML_ROWS` groups that cost the
    most and say how many more there are, with a link to the JSON, which keeps every group."""
    from margin.dashboard.views import HTML_ROWS

    made = seed(db_path)
    extra = HTML_ROWS + 57
    engine = db.make_sync_engine(f"sqlite:///{db_path}")
    with engine.begin() as connection:
        costs = [row(1000 + i, tags={"feature": f"f{i:04d}"}, cost_nanousd=(i + 1) * 1000) for i in range(extra)]
        ingest.ingest_batch(connection, costs)
    engine.dispose()
    headers = {"authorization": f"Bearer {made['search']}"}
    async with gateway(fake_settings(db_path, revenue=REVENUE)) as gw:
        pages: tuple[tuple[str, Callable[[Any], list[Any]]], ...] = (
            ("breakdown", lambda d: d["groups"]),
            ("margin", lambda d: d["margins"]["groups"]),
        )
        for page, groups_of in pages:
            api = await gw.http.get(f"/dashboard/api/{page}?by=feature", headers=headers)
            html = await gw.http.get(f"/dashboard/{page}?by=feature", headers=headers)
            groups = groups_of(api.json())
            assert len(groups) == extra + 1  # and the seed's `qa`
            shown = re.findall(r'<tr data-key="([^"]*)"', html.text)
            assert shown[:HTML_ROWS] == [g["key"] for g in groups[:HTML_ROWS]], page  # the costliest first
            assert len(shown) == HTML_ROWS + (page == "breakdown"), page  # + the breakdown's total row
            more = re.search(r'<p class="muted" id="more-rows">(.*?)</p>', html.text, re.S)
            assert more is not None and f"{len(groups) - HTML_ROWS} more" in more.group(1), page
            assert f'href="/dashboard/api/{page}?by=feature&amp;since=7d"' in more.group(1)
        few = await gw.http.get("/dashboard/breakdown?by=model", headers=headers)
    assert 'id="more-rows"' not in few.text
