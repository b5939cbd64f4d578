"""FOCUS ListCost of batch lines: the cost at list price, before the batch discount (the ledger row's cost +
`discount_nanousd`), while BilledCost, EffectiveCost and ContractedCost stay what was charged. Before, ListCost
was the discounted cost. From the charges rollup (whole days: the discount read from the batch lines' rows) and
from rows (partial days, `--tags`), CSV and Parquet, SQLite and PostgreSQL."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from margin.report.focus import export, focus_rows
from tests.helpers import fake_settings
from tests.report.ledgers import MILLI, at, load, row

HALF = MILLI // 2  # a batch line at a 50 % discount: charged half, the other half its discount


def _rows() -> list[dict[str, Any]]:
    """Nov 2: two batch lines and a live request of one charge; Nov 3: a batch line alone (a charge of its own)."""
    line = {"batch_id": "batch_1", "cost_nanousd": HALF, "discount_nanousd": HALF}
    return [
        row("b1", created_at=at(2, 1), **line),
        row("b2", created_at=at(2, 2), **line),
        row("live", created_at=at(2, 3), cost_nanousd=MILLI),
        row("b3", created_at=at(3, 1), **line),
    ]


@pytest.fixture
def batched(both_ledgers: sa.Engine) -> sa.Engine:
    load(both_ledgers, _rows(), outcomes=False)
    return both_ledgers


EXPECTED = {  # day: (BilledCost, ListCost) in nano-USD
    "2026-11-02": (2 * HALF + MILLI, 3 * MILLI),
    "2026-11-03": (HALF, MILLI),
}


def _costs(rows: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    found: dict[str, tuple[int, int]] = {}
    for r in rows:
        day = str(r["ChargePeriodStart"])[:10]
        billed, listed = (int(Decimal(r[name]) * 1_000_000_000) for name in ("BilledCost", "ListCost"))
        assert r["EffectiveCost"] == r["ContractedCost"] == r["BilledCost"]  # what was charged
        assert day not in found
        found[day] = (billed, listed)
    return found


def test_a_batch_lines_list_cost_is_before_its_discount(batched: sa.Engine, tmp_path: Path) -> None:
    settings = fake_settings(tmp_path / "x.db")
    export(batched, settings, "2026-11", tmp_path / "f.csv")
    with (tmp_path / "f.csv").open(newline="") as handle:
        assert _costs(list(csv.DictReader(handle))) == EXPECTED  # before: ListCost == BilledCost
    export(batched, settings, "2026-11", tmp_path / "f.parquet")
    table = [
        {**r, **{k: str(r[k]) for k in r if k.endswith("Cost")}}
        for r in pq.read_table(tmp_path / "f.parquet").to_pylist()
    ]
    assert _costs(table) == EXPECTED
    rolled = focus_rows(batched, settings, "2026-11").rows
    assert rolled == focus_rows(batched, settings, "2026-11", rollup=False).rows  # the rollup's days, and rows'
    assert _costs(focus_rows(batched, settings, "2026-11", tags=("feature",)).rows) == EXPECTED  # read from rows
