"""Rendering details: escaping of ledger values, SVG charts, security headers, the stylesheet."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from margin.dashboard.charts import bar_chart, meter
from margin.ledger import db, ingest
from tests.dashboard.seed import row, seed
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
