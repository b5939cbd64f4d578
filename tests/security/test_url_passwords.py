"""Passwords in the database and Redis URLs never leave margin: against a running gateway whose ledger is a
PostgreSQL URL with a password (the test server trusts loopback, so it ignores it) and one whose workers
share a Redis that requires one. Before, `margin serve`'s start-up lines printed both URLs whole; `margin
config show` printed them too, and a config error quoted the text with `${PGPASSWORD}` expanded."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from margin.cli import app
from tests.helpers import free_port
from tests.security.conftest import FAKE_CONFIG, ServeFactory
from tests.servers import redis_server

PASSWORD = "s3cret-P@ss/w:rd"
ENCODED = "s3cret-P%40ss%2Fw%3Ard"  # as a URL carries it
CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
# every GET an operator (here: open mode, the loopback operator) or a caller can make of a running gateway
READS = [
    "/readyz",
    "/healthz",
    "/v1/models",
    "/openapi.json",
    "/metrics",
    "/admin/backends",
    "/admin/keys",
    "/admin/usage",
    "/admin/budgets",
    "/v1/batches",
    "/dashboard",
    "/dashboard/backends",
    "/dashboard/api/overview",
    "/dashboard/api/backends",
]


def _with_password(url: str) -> str:
    """The test server's URL (`postgresql://margin@host:port/db`) with a password for user margin."""
    return url.replace("://margin@", f"://margin:{ENCODED}@", 1)


def _secret_free(text: str, where: str) -> None:
    assert "s3cret" not in text.replace("\n", ""), f"{where}: {text[-3000:]}"  # rich may wrap a long word


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_serve_shows_no_ledger_password(
    served: ServeFactory, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # the banner's lines unwrapped
    ledger = _with_password(postgres_url)
    with served(ledger=ledger) as gw, gw.client() as client:
        assert client.post("/v1/chat/completions", json=CHAT).is_success
        for path in READS:
            response = client.get(path)
            assert response.status_code == 200, (path, response.status_code, response.text[:300])
            _secret_free(response.text, path)
            _secret_free(str(response.headers), f"{path} headers")
    banner = (tmp_path / "serve.log").read_text()
    _secret_free(banner, "serve's output")
    assert re.search(r"ledger: postgresql://margin:\*\*\*@127\.0\.0\.1:\d+/ledger", banner), banner


def test_workers_banner_shows_no_redis_password(
    served: ServeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    workdir = tmp_path / "redis"
    workdir.mkdir()
    with redis_server(free_port(), workdir, password=PASSWORD) as url:
        assert ENCODED in url  # the workers reach Redis with the password (it refuses them without)
        storage = {**FAKE_CONFIG["storage"], "redis": url}
        with served({"storage": storage}, extra=["--workers", "2"]) as gw, gw.client() as client:
            assert client.post("/v1/chat/completions", json=CHAT).is_success
            _secret_free(client.get("/healthz").text, "/healthz")
    banner = (tmp_path / "serve.log").read_text()
    _secret_free(banner, "serve's output")
    assert re.search(r"2 worker processes; .* shared through redis://:\*\*\*@127\.0\.0\.1:\d+/0", banner), banner


def _config(tmp_path: Path, storage: dict[str, Any]) -> Path:
    path = tmp_path / "margin.yaml"
    path.write_text(yaml.safe_dump({**FAKE_CONFIG, "storage": storage}))
    return path


def test_config_show_hides_url_passwords(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD_TEST", ENCODED)
    storage = {"ledger": "postgresql://margin:${PGPASSWORD_TEST}@db/margin", "redis": f"rediss://:{ENCODED}@r:6380/1"}
    config = _config(tmp_path, storage)
    shown = CliRunner().invoke(app, ["config", "show", "--config", str(config)])
    assert shown.exit_code == 0, shown.output
    _secret_free(shown.output, "config show")
    dumped = yaml.safe_load(shown.output)["storage"]
    assert dumped["ledger"] == "postgresql://margin:***@db/margin"
    assert dumped["redis"] == "rediss://:***@r:6380/1"


def test_config_errors_quote_no_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A YAML error after `${VAR}` expansion, and a ledger URL no database driver reads."""
    monkeypatch.setenv("PGPASSWORD_TEST", ENCODED)
    broken = tmp_path / "broken.yaml"
    broken.write_text("storage:\n  ledger: postgresql://margin:${PGPASSWORD_TEST}@db/margin: oops\n")
    checked = CliRunner().invoke(app, ["config", "check", str(broken)])
    assert checked.exit_code == 2 and "not valid YAML: mapping values are not allowed here (line 2" in _flat(
        checked.output
    ), checked.output
    _secret_free(checked.output, "config check")
    for ledger in (f"postgresql://margin:{ENCODED}@db:5432x/margin", f"postgres ql://margin:{ENCODED}@db/margin"):
        config = _config(tmp_path, {"ledger": ledger})
        refused = CliRunner().invoke(app, ["serve", "--config", str(config)])
        assert refused.exit_code == 2, refused.output
        assert "storage.ledger is not a database URL: 'postgres" in _flat(refused.output), refused.output
        _secret_free(refused.output, ledger)


def test_an_unreachable_ledger_is_reported_without_its_password(tmp_path: Path) -> None:
    """Already so before: the driver's message names host and port only (kept so)."""
    config = _config(tmp_path, {"ledger": f"postgresql://margin:{ENCODED}@127.0.0.1:1/margin"})
    refused = CliRunner().invoke(app, ["serve", "--config", str(config)])
    assert refused.exit_code == 2 and "ledger database: connection failed" in _flat(refused.output), refused.output
    _secret_free(refused.output, "serve")
