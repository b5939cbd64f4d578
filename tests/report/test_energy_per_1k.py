"""Energy per 1K tokens over the requests with an energy figure (the rollups' `energy_tokens`, 0028), wherever the
report shows energy: `margin report`'s summary (JSON and its table), the `carbon` view and the dashboard's
figures. A mixed region: a local model's 100 tokens at 3,600 J and a hosted API's 9,900 tokens with no energy
model read 36,000 J per 1K tokens, not 360 (every token). Before, no view showed energy per token. On SQLite and
PostgreSQL, from the rollups and from the rows."""

from __future__ import annotations

import io

import pytest
import sqlalchemy as sa
from rich.console import Console

from margin.dashboard.queries import breakdown
from margin.ledger import ingest
from margin.ledger.read import Window
from margin.report.metrics import carbon
from margin.report.queries import summarize
from margin.report.render import render_summary
from tests.report.ledgers import at, complete, row

PER_1K_J = 3600.0 / 100 * 1000


@pytest.fixture
def mixed(both_ledgers: sa.Engine) -> sa.Engine:
    rows = [
        row("local", region="eu", model="local", input_tokens=60, output_tokens=40, energy_j=3600.0,
            energy_method="modelled", co2e_g=1.0, created_at=at(2, 1)),
        row("hosted", region="eu", input_tokens=9_000, output_tokens=900, created_at=at(2, 3)),
        row("elsewhere", region="us", input_tokens=500, output_tokens=500, created_at=at(2, 3)),
    ]  # fmt: skip
    with both_ledgers.begin() as connection:
        ingest.ingest_batch(connection, [complete(r) for r in rows])
    return both_ledgers


@pytest.mark.parametrize("rolled", [True, False], ids=["rollups", "rows"])
def test_energy_per_1k_tokens_leaves_out_the_tokens_without_a_figure(mixed: sa.Engine, rolled: bool) -> None:
    window = Window(at(1), at(16), rollup=rolled)
    summary = summarize(mixed, window, by="region")
    groups = {g["key"]: g for g in summary["groups"]}
    assert groups["eu"]["energy_j"] == 3600.0
    assert groups["eu"]["energy_j_per_1k_tokens"] == pytest.approx(PER_1K_J)  # not 3600 / 10,000 tokens
    assert groups["us"]["energy_j_per_1k_tokens"] is None  # no figure: unknown, not 0 J
    assert summary["totals"]["energy_j_per_1k_tokens"] == pytest.approx(PER_1K_J)
    eu, us = sorted(carbon(mixed, window), key=lambda c: str(c.key))
    assert (eu.tokens, eu.energy_tokens) == (10_000, 100)
    assert eu.to_json()["energy_j_per_1k_tokens"] == pytest.approx(PER_1K_J)
    assert us.energy_j_per_1k_tokens is None and us.to_json()["energy_j_per_1k_tokens"] is None
    with mixed.connect() as connection:  # the dashboard's breakdown page and its JSON
        shown, _, totals = breakdown(connection, window, "region")
    assert {g["key"]: g["energy_j_per_1k_tokens"] for g in shown} == {"eu": pytest.approx(PER_1K_J), "us": None}
    assert totals["energy_j_per_1k_tokens"] == pytest.approx(PER_1K_J)


def test_the_report_table_shows_it(mixed: sa.Engine) -> None:
    out = io.StringIO()
    render_summary(Console(file=out, width=200), summarize(mixed, Window(at(1), at(16)), by="region"))
    table = out.getvalue()
    assert "J/1K tokens" in table
    (eu,) = [line for line in table.splitlines() if "│ eu" in line]
    assert "3.6e+04" in eu  # 36,000 J per 1K tokens, as the table writes figures (3 significant digits)
