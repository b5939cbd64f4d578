"""The dashboard's SQL on PostgreSQL (hour/day buckets, rounding, JSON tags) gives the report's figures."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from margin.ledger import db
from margin.report.business import margins
from margin.report.queries import Window, summarize
from tests.dashboard.seed import seed
from tests.dashboard.test_numbers import shared
from tests.helpers import fake_settings, gateway


async def test_pages_match_the_report_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    name = f"dash_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    made = seed(url)
    headers = {"authorization": f"Bearer {made['admin']}"}
    settings = fake_settings(tmp_path / "unused.db", storage={"ledger": url})
    async with gateway(settings) as gw:
        overview = (await gw.http.get("/dashboard/api/overview?since=7d", headers=headers)).json()
        hourly = (await gw.http.get("/dashboard/api/overview?since=24h", headers=headers)).json()
        customers = (await gw.http.get("/dashboard/api/breakdown?by=customer", headers=headers)).json()
        latency = (await gw.http.get("/dashboard/api/latency", headers=headers)).json()
        capped = (await gw.http.get("/dashboard/api/margin?by=feature&limit=1", headers=headers)).json()["margins"]
        team_view = await gw.http.get("/dashboard/api/overview", headers={"authorization": f"Bearer {made['ads']}"})
    engine = db.make_sync_engine(url)
    try:
        window = Window(datetime.now(UTC) - timedelta(days=7))
        report = summarize(engine, window, "customer")
        rows = summarize(engine, Window(window.since, rollup=False), "customer")
        by_model = {g["key"]: g for g in summarize(engine, window, "model")["groups"]}
        every = margins(engine, window, settings.revenue, (), "feature").to_json()
    finally:
        engine.dispose()
    assert shared(overview["totals"]) == shared(report["totals"]) == shared(rows["totals"])
    assert {g["key"]: shared(g) for g in rows["groups"]} == {g["key"]: shared(g) for g in report["groups"]}
    assert [p["requests"] for p in overview["trend"]["points"] if p["requests"]] == [1, 7]  # two active days
    busy = [p for p in hourly["trend"]["points"] if p["requests"]]
    assert len(busy) == 1 and busy[0]["bucket"].endswith(":00:00") and busy[0]["bucket"][10] == "T"  # ISO hour
    assert {g["key"]: shared(g) for g in customers["groups"]} == {g["key"]: shared(g) for g in report["groups"]}
    for model in latency["models"]:
        assert model["e2e_ms"]["p50"] == by_model[model["model"]]["latency_p50_ms"]
    assert team_view.json()["totals"]["requests"] == 3
    # the margin page's cap (read.top, customers of the listed features only) on PostgreSQL: the same first group
    assert capped["groups"] == every["groups"][:1] and capped["groups_total"] == len(every["groups"]) > 1
    assert capped["others"]["requests"] == sum(g["requests"] for g in every["groups"][1:])
