"""`margin report --team NAME --org ORG`: two orgs' teams of one name are two teams, as on the dashboard; a
team name that several orgs have is refused without `--org`, never added up across them."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from typer.testing import CliRunner

from margin.cli import app
from margin.ledger import db, ingest
from tests.ledger.tenants import ROWS, START, TENANTS

runner = CliRunner()
WINDOW = ["--since", (START - timedelta(days=1)).isoformat(), "--until", (START + timedelta(days=1)).isoformat()]


def _ledger(tmp_path: Path) -> list[str]:
    """The tenants' rows, and a key per tenant in api_keys (what tells which orgs have a team)."""
    path = tmp_path / "o.db"
    url = f"sqlite:///{path}"
    db.upgrade(url)
    for name, (org, team) in TENANTS.items():
        args = ["keys", "create", "--name", name, "--db", str(path)]
        args += [*(["--team", team] if team else []), *(["--org", org] if org else [])]
        assert runner.invoke(app, args).exit_code == 0
    engine = db.make_sync_engine(url)
    with engine.begin() as connection:
        ingest.ingest_batch(connection, ROWS)
    engine.dispose()
    return ["--db", str(path)]


def _cost(args: list[str]) -> Decimal:
    result = runner.invoke(app, ["report", *WINDOW, "--json", *args])
    assert result.exit_code == 0, result.output
    return Decimal(json.loads(result.output)["totals"]["cost_usd"]) * 1_000_000_000


def test_report_keeps_two_orgs_teams_of_one_name_apart(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    assert _cost([*ledger, "--team", "bravo", "--org", "globex"]) == 16_000
    assert _cost([*ledger, "--team", "bravo", "--org", "acme"]) == 4_000 + 8_000
    assert _cost([*ledger, "--team", "alpha"]) == 100 + 200 + 1 + 400  # one org has it: no --org needed
    assert _cost([*ledger, "--org", "acme"]) == 100 + 200 + 1 + 400 + 4_000 + 8_000 + 32_000 + 64_000
    assert _cost([*ledger, "--org", "globex", "--view", "summary"]) == 16_000
    assert _cost([*ledger, "--team", "bravo", "--org", "initech"]) == 0
    assert _cost([*ledger, "--org", ""]) == 0  # every row here has an org
    refused = runner.invoke(app, ["report", *WINDOW, "--json", *ledger, "--team", "bravo"])
    assert refused.exit_code != 0
    assert "'acme', 'globex'" in refused.output and "--org" in refused.output
    assert "28000" not in refused.output
