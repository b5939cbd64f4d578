from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from margin.cli import app
from margin.evals import guard as guard_eval
from margin.evals.guard import EntityScore, run_guard_eval

runner = CliRunner()


def test_eval_guard_json() -> None:
    result = runner.invoke(app, ["eval", "guard", "--n", "150", "--seed", "3", "--json", "--gate"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["n"] == 150 and data["seed"] == 3 and data["passed"] is True
    assert set(data["entities"]) == {"EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "US_SSN", "IP_ADDRESS", "SECRET"}
    for score in data["entities"].values():
        assert score["support"] > 0
        assert 0.0 <= score["recall"] <= 1.0 and 0.0 <= score["precision"] <= 1.0
    assert data["injection"]["tpr"] > 0.8
    assert data["injection"]["fpr"] < 0.1
    assert data["throughput"]["texts_per_s"] > 0
    assert set(data["latency_us"]) == {
        f"{kind}:{name}" for kind in ("pii", "injection") for name in ("short_clean", "1kb_clean", "1kb_pii")
    }


def test_eval_guard_table() -> None:
    result = runner.invoke(app, ["eval", "guard", "--n", "60"])
    assert result.exit_code == 0, result.output
    assert "CREDIT_CARD" in result.output and "TPR" in result.output and "µs per call" in result.output


def test_gate_exits_1_when_an_entity_misses_target(monkeypatch: pytest.MonkeyPatch) -> None:
    report, errors = run_guard_eval(30, 1, latency_repeats=1)
    report.entities["PHONE"] = EntityScore("PHONE", support=100, predicted=100, found=90, correct=90)
    assert not report.passed
    monkeypatch.setattr(guard_eval, "run_guard_eval", lambda n, seed: (report, errors))
    gated = runner.invoke(app, ["eval", "guard", "--json", "--gate"])
    assert gated.exit_code == 1
    assert json.loads(gated.output)["passed"] is False
    assert runner.invoke(app, ["eval", "guard", "--json"]).exit_code == 0
