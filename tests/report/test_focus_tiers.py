"""FOCUS charges per service tier: one model's standard, flex and priority requests of a day are three FOCUS
rows, each with its own cost and request count and the tier in `x_ServiceTier` (CSV and Parquet), from the
rollup (whole days) and from rows (a window's partial day), on SQLite and PostgreSQL; `margin report --by
service_tier` groups by it."""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from margin.cli import app
from margin.ledger import db
from margin.ledger.read import Window
from margin.ledger.read.charges import charges
from margin.report.business import tasks
from margin.report.focus import COLUMNS, export, focus_rows
from margin.report.metrics import carbon
from margin.report.queries import summarize
from tests.helpers import fake_settings
from tests.report.ledgers import MILLI, at, load, row

FLEX, PRIORITY = MILLI // 2, 1_800_000  # what the same tokens cost at flex and priority against $0.001 standard
# (day, hour, tier) of each request: one model, backend, key and team; the 3rd at 20:00 is after the partial window
REQUESTS = [
    (2, 1, None), (2, 2, None), (2, 3, "flex"), (2, 4, "flex"), (2, 5, "flex"), (2, 6, "priority"),
    (3, 1, None), (3, 2, "flex"), (3, 3, "priority"), (3, 20, "priority"),
]  # fmt: skip
PRICE = {None: MILLI, "flex": FLEX, "priority": PRIORITY}
# (day, tier) -> (requests, cost in nano-USD): the month's FOCUS rows
EXPECTED = {
    ("2026-11-02", None): (2, 2 * MILLI), ("2026-11-02", "flex"): (3, 3 * FLEX),
    ("2026-11-02", "priority"): (1, PRIORITY), ("2026-11-03", None): (1, MILLI), ("2026-11-03", "flex"): (1, FLEX),
    ("2026-11-03", "priority"): (2, 2 * PRIORITY),
}  # fmt: skip


def tier_rows() -> list[dict[str, Any]]:
    return [
        row(f"t{i}", created_at=at(day, hour), service_tier=tier, cost_nanousd=PRICE[tier], input_tokens=100,
            output_tokens=50)
        for i, (day, hour, tier) in enumerate(REQUESTS)
    ]  # fmt: skip


@pytest.fixture
def tiered(both_ledgers: sa.Engine) -> sa.Engine:
    load(both_ledgers, tier_rows(), outcomes=False)
    return both_ledgers


def by_day_and_tier(rows: list[dict[str, Any]]) -> dict[tuple[str, Any], tuple[int, int]]:
    found: dict[tuple[str, Any], tuple[int, int]] = {}
    for r in rows:
        key = (r["ChargePeriodStart"][:10], r["x_ServiceTier"] or None)
        assert key not in found, key  # one row per day and tier
        found[key] = (int(r["x_Requests"]), int(Decimal(r["BilledCost"]) * 1_000_000_000))
    return found


def test_a_focus_row_per_tier_in_csv(tiered: sa.Engine, tmp_path: Path) -> None:
    out = tmp_path / "f.csv"
    result = export(tiered, fake_settings(tmp_path / "x.db"), "2026-11", out)
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert result.count == len(rows) == 6 and list(rows[0]) == list(COLUMNS)
    assert by_day_and_tier(rows) == EXPECTED
    flex = next(r for r in rows if r["x_ServiceTier"] == "flex" and r["ChargePeriodStart"].startswith("2026-11-02"))
    assert flex["ChargeDescription"] == "3 requests to priced at flex via api"
    assert flex["x_ModelName"] == "priced" and flex["PricingQuantity"] == "450.0"


def test_a_focus_row_per_tier_in_parquet_from_the_rollup_and_from_rows(tiered: sa.Engine, tmp_path: Path) -> None:
    out = tmp_path / "f.parquet"
    settings = fake_settings(tmp_path / "x.db")
    export(tiered, settings, "2026-11", out)
    table = pq.read_table(out).to_pylist()
    rows = [{**r, "ChargePeriodStart": r["ChargePeriodStart"].isoformat()} for r in table]
    assert by_day_and_tier(rows) == EXPECTED
    assert focus_rows(tiered, settings, "2026-11").rows == focus_rows(tiered, settings, "2026-11", rollup=False).rows
    by_tags = focus_rows(tiered, settings, "2026-11", tags=("feature",)).rows  # read from rows
    assert {(r["ChargePeriodStart"].date().isoformat(), r["x_ServiceTier"]) for r in by_tags} == set(EXPECTED)


def test_a_partial_day_is_split_by_tier_from_rows(tiered: sa.Engine) -> None:
    """Nov 2 whole (from ledger_charges), Nov 3 until noon (from rows): priority's 20:00 request is left out."""
    window = (at(1, 12), at(3, 12))
    with tiered.connect() as connection:
        rolled, rows = (charges(connection, Window(*window, rollup=r)) for r in (True, False))
    found = {(c.day, c.service_tier): (c.requests, c.cost_nanousd) for c in rolled}
    assert rolled == rows
    assert found == EXPECTED | {("2026-11-03", "priority"): (1, PRIORITY)}


def test_the_report_groups_by_service_tier(tiered: sa.Engine) -> None:
    window = Window(at(1), at(4))
    groups = {g["key"]: (g["requests"], g["cost_usd"]) for g in summarize(tiered, window, "service_tier")["groups"]}
    assert groups == {None: (3, "0.003000000"), "flex": (4, "0.002000000"), "priority": (3, "0.005400000")}
    rows = Window(at(1), at(4), rollup=False)
    assert summarize(tiered, rows, "service_tier") == summarize(tiered, window, "service_tier")
    per_task = [(t.key, t.tasks, t.cost_usd) for t in tasks(tiered, window, "service_tier")]  # its 1st request's
    assert per_task == [("priority", 3, Decimal("0.0054")), (None, 3, Decimal("0.003")), ("flex", 4, Decimal("0.002"))]
    assert per_task == [(t.key, t.tasks, t.cost_usd) for t in tasks(tiered, rows, "service_tier")]
    assert {c.key: c.requests for c in carbon(tiered, window, "service_tier")} == {None: 3, "flex": 4, "priority": 3}


def test_margin_report_by_service_tier(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    load(engine, tier_rows(), outcomes=False)
    engine.dispose()
    window = ["--since", "2026-11-01", "--until", "2026-11-04", "--db", str(tmp_path / "c.db")]
    result = CliRunner().invoke(app, ["report", *window, "--by", "service_tier", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["by"] == "service_tier"
    assert [(g["key"], g["requests"]) for g in report["groups"]] == [("priority", 3), (None, 3), ("flex", 4)]
