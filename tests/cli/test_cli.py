"""The `margin` command: cost calculator, keys, report, config, and serve's exposure check."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from margin.cli import app
from tests.helpers import fake_settings, gateway

runner = CliRunner()


def test_cost_seed_001_example_text_and_json() -> None:
    args = [
        "cost",
        "--hourly-usd",
        "10",
        "--tokens-per-s",
        "33",
        "--energy-overhead",
        "0.20",
        "--network-overhead",
        "0.10",
    ]
    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.output
    assert "$0.000084/token before overheads" in text.output
    assert "≈$0.109 per 1K tokens" in text.output
    data = json.loads(runner.invoke(app, [*args, "--json"]).output)
    assert isinstance(data["usd_per_1k_tokens"], str)
    assert Decimal(data["usd_per_1k_tokens"]).quantize(Decimal("0.001")) == Decimal("0.109")
    assert data["usd_per_token_before_overheads"].startswith("0.0000841750")


def test_cost_text_shows_a_cheap_token_and_its_carbon_not_zeros() -> None:
    # $0.05/h at 5000 tok/s: 2.78e-9 $/token, $0.0028 per 1M; 10 W → 0.002 J/token, 3.1e-5 g per 1K at 56 g/kWh
    args = ["cost", "--hourly-usd", "0.05", "--tokens-per-s", "5000", "--watts", "10", "--region", "FRA"]
    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.output
    assert "$0.0000000028/token before overheads" in text.output  # was $0.000000
    assert "≈$0.0000028 per 1K tokens, $0.0028 per 1M" in text.output  # was $0.000 and $0.00
    assert "carbon: 3.111e-05 gCO2e" in text.output  # was 0.0000


def test_cost_options_that_need_power_are_refused_without_it() -> None:
    base = ["cost", "--hourly-usd", "1", "--tokens-per-s", "10"]
    for extra in (["--region", "FRA"], ["--usd-per-kwh", "0.2"], ["--pue", "1.5"]):  # all were ignored
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2 and "give --watts too" in " ".join(result.output.split()), result.output


def test_cost_with_power_and_region() -> None:
    result = runner.invoke(
        app,
        [
            "cost",
            "--hourly-usd",
            "2.5",
            "--tokens-per-s",
            "1000",
            "--watts",
            "700",
            "--pue",
            "1.1",
            "--region",
            "FRA",
            "--json",
        ],
    )
    data = json.loads(result.output)
    assert data["energy_j_per_token"] == pytest.approx(0.77)
    assert data["grid_source"].startswith("table:FRA") and data["co2e_g_per_1k_tokens"] > 0
    bad = runner.invoke(
        app, ["cost", "--hourly-usd", "1", "--tokens-per-s", "1", "--watts", "1", "--region", "ATLANTIS"]
    )
    assert bad.exit_code == 2 and "unknown region" in bad.output


def test_keys_lifecycle(tmp_path: Path) -> None:
    db = str(tmp_path / "k.db")
    created = runner.invoke(
        app, ["keys", "create", "--name", "svc", "--team", "search", "--tag", "feature=qa", "--db", db, "--json"]
    )
    assert created.exit_code == 0, created.output
    key = json.loads(created.output)
    assert key["key"].startswith(f"mgn_{key['id']}_") and key["tags"] == {"feature": "qa"}
    listed = json.loads(runner.invoke(app, ["keys", "list", "--db", db, "--json"]).output)
    assert listed == [
        {
            "id": key["id"],
            "name": "svc",
            "team": "search",
            "org": None,
            "tags": {"feature": "qa"},
            "admin": False,
            "policy": None,
            "created_at": listed[0]["created_at"],
            "revoked_at": None,
            "expires_at": None,
            "rotated_at": None,  # never rotated (`keys rotate`)
            "previous_valid_until": None,
            "state": "active",
            "revoked": False,
        }
    ]
    assert key["key"] not in runner.invoke(app, ["keys", "list", "--db", db]).output
    assert runner.invoke(app, ["keys", "revoke", key["id"], "--db", db]).exit_code == 0
    again = runner.invoke(app, ["keys", "revoke", key["id"], "--db", db])
    assert again.exit_code == 2 and "no active key" in again.output
    bad_tag = runner.invoke(app, ["keys", "create", "--name", "x", "--tag", "oops", "--db", db])
    assert bad_tag.exit_code == 2


def test_keys_expire(tmp_path: Path) -> None:
    """`--expires` takes a lifetime or an ISO date-time, bounded (a minute to ten years); `keys list` shows it.
    Before, the option did not exist (exit 2) and keys never expired."""
    db = str(tmp_path / "e.db")
    made = runner.invoke(app, ["keys", "create", "--name", "ci", "--expires", "30d", "--db", db, "--json"])
    assert made.exit_code == 0, made.output
    expires = datetime.fromisoformat(json.loads(made.output)["expires_at"])
    assert timedelta(days=29, hours=23) < expires - datetime.now(UTC) <= timedelta(days=30)
    for lifetime, seconds in (("12h", 12 * 3600), ("90m", 90 * 60)):
        out = runner.invoke(app, ["keys", "create", "--name", lifetime, "--expires", lifetime, "--db", db, "--json"])
        left = datetime.fromisoformat(json.loads(out.output)["expires_at"]) - datetime.now(UTC)
        assert seconds - 60 < left.total_seconds() <= seconds
    dated = runner.invoke(app, ["keys", "create", "--name", "d", "--expires", "2099-01-02T03:04:05", "--db", db])
    assert dated.exit_code == 2 and "10 years" in dated.output  # past the bound
    at = (datetime.now(UTC) + timedelta(days=7)).replace(microsecond=0)
    iso = runner.invoke(app, ["keys", "create", "--name", "iso", "--expires", at.isoformat(), "--db", db, "--json"])
    assert datetime.fromisoformat(json.loads(iso.output)["expires_at"]) == at
    naive = at.replace(tzinfo=None).isoformat()  # no zone: UTC
    utc = runner.invoke(app, ["keys", "create", "--name", "utc", "--expires", naive, "--db", db, "--json"])
    assert datetime.fromisoformat(json.loads(utc.output)["expires_at"]) == at
    for bad in ("soon", "0d", "30s", "-1d", "1d2h", "59s", "4000d"):
        refused = runner.invoke(app, ["keys", "create", "--name", "x", "--expires", bad, "--db", db])
        assert refused.exit_code == 2, (bad, refused.output)
    listed = runner.invoke(app, ["keys", "list", "--db", db], env={"COLUMNS": "200"})
    assert str(expires)[:10] in listed.output and "never" not in listed.output
    rows = json.loads(runner.invoke(app, ["keys", "list", "--db", db, "--json"]).output)
    assert {row["name"]: row["state"] for row in rows} == dict.fromkeys(("ci", "12h", "90m", "iso", "utc"), "active")


async def test_report_json_matches_the_ledger(db_path: Path) -> None:
    async with gateway(fake_settings(db_path)) as gw:
        for tags in ("feature=search", "feature=search", "feature=chat"):
            response = await gw.http.post(
                "/v1/chat/completions",
                headers={"x-margin-tags": tags},
                json={"model": "fake-chat", "messages": [{"role": "user", "content": "a b"}]},
            )
            assert response.status_code == 200
        await gw.http.post(
            "/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}
        )
        rows = await gw.rows()
    result = runner.invoke(app, ["report", "--db", str(db_path), "--by", "feature", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    totals = report["totals"]
    assert totals["requests"] == 4 and totals["errors"] == 1
    assert (totals["input_tokens"], totals["output_tokens"]) == (6, 15)
    assert Decimal(totals["cost_usd"]) == sum(Decimal(r.cost_nanousd) for r in rows) / Decimal(10**9)
    assert totals["energy_j"] > 0 and totals["co2e_g"] > 0 and totals["latency_p50_ms"] > 0
    by_feature = {g["key"]: g for g in report["groups"]}
    assert by_feature["search"]["requests"] == 2 and by_feature["chat"]["requests"] == 1
    assert by_feature[None]["errors"] == 1
    table = runner.invoke(app, ["report", "--db", str(db_path), "--since", "1h"])
    assert table.exit_code == 0 and "total" in table.output
    future = json.loads(runner.invoke(app, ["report", "--db", str(db_path), "--since", "2999-01-01", "--json"]).output)
    assert future["totals"]["requests"] == 0 and future["totals"]["usd_per_1k_tokens"] is None
    assert runner.invoke(app, ["report", "--db", str(db_path), "--by", "colour"]).exit_code == 2


def test_serve_refuses_public_address_without_keys(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--db", str(tmp_path / "s.db"), "--host", "0.0.0.0", "--port", "1"])
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0 with no API keys" in result.output


def test_config_show_and_check(tmp_path: Path) -> None:
    shown = runner.invoke(app, ["config", "show", "--default"])
    assert "builtin:smollm2-135m-q4_1" in shown.output
    path = tmp_path / "c.yaml"
    path.write_text("server: {port: 1234}\n")
    assert runner.invoke(app, ["config", "check", str(path)]).exit_code == 0
    path.write_text("server: {prot: 1234}\n")
    checked = runner.invoke(app, ["config", "check", str(path)])
    assert checked.exit_code == 2 and "server.prot" in checked.output
    path.write_text("flags: [{name: stop, target: {kind: global}, action: disable, model: m}]\n")
    checked = runner.invoke(app, ["config", "check", str(path)])  # loads, as a stored one does, but is named
    assert checked.exit_code == 0 and "warning: flag stop: disable ignores `model`; remove it" in checked.output


def test_db_commands(tmp_path: Path) -> None:
    db = str(tmp_path / "d.db")
    assert runner.invoke(app, ["db", "current", "--db", db]).output.strip() == "empty"
    from margin.ledger.db import head_revision

    assert f"revision {head_revision()}" in runner.invoke(app, ["db", "upgrade", "--db", db]).output


def test_flags_set_refuses_an_argument_its_action_does_not_use(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from margin.ledger import db as ledger_db
    from margin.ledger.models import gov_rules

    db = str(tmp_path / "f.db")
    ledger_db.upgrade(f"sqlite:///{db}")
    base = ["flags", "set", "f", "--target", "global", "--db", db]
    for extra, word in (
        (["--action", "disable", "--model", "x"], "disable does not use `model`"),
        (["--action", "require_cache", "--max-tokens", "5"], "require_cache does not use `max_tokens`"),
        (["--action", "force_model", "--model", "x", "--max-tokens", "5"], "force_model does not use `max_tokens`"),
        (["--action", "cap_max_tokens", "--max-tokens", "5", "--model", "x"], "does not use `model`"),
        (["--action", "disable", "--max-tokens", "0"], "max_tokens"),  # 0 was dropped without a word
    ):
        refused = runner.invoke(app, [*base, *extra])
        assert refused.exit_code == 2 and word in refused.output.replace("\n", ""), (extra, refused.output)
    assert json.loads(runner.invoke(app, ["flags", "list", "--db", db, "--json"]).output) == []
    # a flag stored with such an argument before this check still loads (and ignores it)
    engine = ledger_db.make_sync_engine(f"sqlite:///{db}")
    spec = {"name": "old", "target": {"kind": "global"}, "action": "disable", "model": "x", "enabled": True}
    with engine.begin() as connection:
        connection.execute(
            sa.insert(gov_rules).values(kind="flag", name="old", spec=spec, updated_at=datetime.now(UTC))
        )
    engine.dispose()
    listed = json.loads(runner.invoke(app, ["flags", "list", "--db", db, "--json"]).output)
    assert [(f["name"], f["action"], f["model"]) for f in listed] == [("old", "disable", "x")]
    ok = runner.invoke(app, [*base, "--action", "cap_max_tokens", "--max-tokens", "5"])
    assert ok.exit_code == 0, ok.output


def test_rules_set_refuses_a_zero_or_a_model_the_gateway_lacks_instead_of_dropping_it(tmp_path: Path) -> None:
    """`--rpm 0` and `--tokens 0` were dropped without a word (`limits set --rpm 0 --tpm 100` stored a tpm-only
    limit, `budgets set --tokens 0 --usd 5` a USD budget, exit 0); `flags set --action force_model --model X` with
    no model X was stored, and every request it covered was a 404 for X. All refused (exit 2), nothing stored."""
    db = str(tmp_path / "z.db")
    for command, word in (
        (["limits", "set", "--scope", "team=a", "--rpm", "0", "--tpm", "100"], "rpm"),
        (["budgets", "set", "b", "--scope", "team=a", "--tokens", "0", "--usd", "5"], "tokens"),
        (["flags", "set", "f", "--target", "global", "--action", "force_model", "--model", "nope"], "`nope`"),
        (["budgets", "set", "b", "--scope", "team=a\tb", "--usd", "5"], "control characters"),
    ):
        refused = runner.invoke(app, [*command, "--db", db])
        assert refused.exit_code == 2 and word in refused.output.replace("\n", ""), (command, refused.output)
    for kind in ("limits", "budgets", "flags"):
        assert json.loads(runner.invoke(app, [kind, "list", "--db", db, "--json"]).output) == []
    forced = ["flags", "set", "f", "--target", "global", "--action", "force_model", "--model", "local", "--db", db]
    assert runner.invoke(app, forced).exit_code == 0  # the default config's alias


def test_a_budget_under_one_nano_usd_stored_before_the_check_still_loads(tmp_path: Path) -> None:
    """`budgets set --usd 1e-10` is refused now (a cap of 0 refused every request); a row stored before that
    check must not stop the rules loading (the gateway would not start, and no budget or flag would refresh)."""
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from margin.ledger import db as ledger_db
    from margin.ledger.models import gov_rules

    db = str(tmp_path / "b.db")
    ledger_db.upgrade(f"sqlite:///{db}")
    refused = runner.invoke(app, ["budgets", "set", "tiny", "--scope", "global", "--usd", "1e-10", "--db", db])
    assert refused.exit_code == 2, refused.output
    engine = ledger_db.make_sync_engine(f"sqlite:///{db}")
    spec = {"name": "old", "scope": {"kind": "global"}, "usd": "1E-10", "period": "month", "mode": "hard"}
    with engine.begin() as connection:
        connection.execute(
            sa.insert(gov_rules).values(kind="budget", name="old", spec=spec, updated_at=datetime.now(UTC))
        )
    engine.dispose()
    listed = runner.invoke(app, ["budgets", "list", "--db", db, "--json"])
    assert listed.exit_code == 0, listed.output
    assert [b["name"] for b in json.loads(listed.output)] == ["old"]


def test_keys_rotate(tmp_path: Path) -> None:
    """`keys rotate <id> --grace` prints a new key for the same id once; `keys list` shows when it was rotated
    and until when the old secret works (never a secret or a hash). Before, the command did not exist."""
    db = str(tmp_path / "r.db")
    made = json.loads(runner.invoke(app, ["keys", "create", "--name", "svc", "--db", db, "--json"]).output)
    out = runner.invoke(app, ["keys", "rotate", made["id"], "--grace", "1h", "--db", db, "--json"])
    assert out.exit_code == 0, out.output
    rotated = json.loads(out.output)
    assert rotated["id"] == made["id"] and rotated["key"].startswith(f"mgn_{made['id']}_")
    assert rotated["key"] != made["key"] and rotated["valid_until"] == rotated["previous_valid_until"]
    left = datetime.fromisoformat(rotated["valid_until"]) - datetime.now(UTC)
    assert timedelta(minutes=59) < left <= timedelta(hours=1)
    text = runner.invoke(app, ["keys", "rotate", made["id"], "--db", db])  # default grace: a day
    assert text.exit_code == 0 and "keeps working until" in text.output and text.output.count("mgn_") == 1
    (row,) = json.loads(runner.invoke(app, ["keys", "list", "--db", db, "--json"]).output)
    assert row["rotated_at"] and row["previous_valid_until"] and "key" not in row and "key_hash" not in row
    listed = runner.invoke(app, ["keys", "list", "--db", db], env={"COLUMNS": "250"})
    assert "old secret until" in listed.output and "mgn_" not in listed.output
    for bad in ("soon", "1x", "-1h", "31d", "1h30m"):
        refused = runner.invoke(app, ["keys", "rotate", made["id"], "--grace", bad, "--db", db])
        assert refused.exit_code == 2, (bad, refused.output)
    assert runner.invoke(app, ["keys", "rotate", "0123abcd", "--db", db]).exit_code == 2  # no such key
    assert runner.invoke(app, ["keys", "revoke", made["id"], "--db", db]).exit_code == 0
    revoked = runner.invoke(app, ["keys", "rotate", made["id"], "--grace", "0", "--db", db])
    assert revoked.exit_code == 2 and "revoked" in revoked.output
