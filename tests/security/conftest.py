"""Attack tests run against a real `margin serve` subprocess over real HTTP (fake backends, a temporary
SQLite ledger unless a test passes PostgreSQL). `served(...)` starts one with a config of the test's choosing
and, optionally, keys created with the CLI first (as an operator would)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from margin.ledger import db as ledger_db
from tests.helpers import margin_serve

ROOT = Path(__file__).resolve().parents[2]  # the repository: make_keys runs as `tests.security.make_keys`
FAKE_CONFIG: dict[str, Any] = {
    "storage": {"flush_interval_ms": 10},
    "regions": {"eu": {"jurisdiction": "EU", "grid_zone": "FRA", "pue": 1.2, "usd_per_kwh": "0.20"}},
    "backends": {
        "fake": {
            "kind": "fake",
            "output_tokens": 5,
            "region": "eu",
            "hardware": {"usd_per_hour": "3.60", "watts_busy": 100},
        },
    },
    "models": {
        "fake-chat": {"backend": "fake", "aliases": ["fc"]},
        "fake-embed": {"backend": "fake", "kind": "embedding"},
    },
}


@dataclass
class Served:
    """A running gateway: its URL, process, ledger and the keys created before it started (name → key)."""

    url: str
    process: subprocess.Popen[bytes]
    db: Path
    config: Path
    keys: dict[str, str] = field(default_factory=dict)
    ledger: str | None = None  # a PostgreSQL URL when the test passed one (else the SQLite file `db`)

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=kwargs.pop("timeout", 30), **kwargs)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `margin <args> --config <this config> --db <this ledger>` (an operator's command)."""
        command = [sys.executable, "-m", "margin", *args, "--config", str(self.config), *_db_flag(self.db, self.ledger)]
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)

    def rows(self, table: str = "ledger") -> list[Any]:
        engine = ledger_db.make_sync_engine(self.ledger or f"sqlite:///{self.db}")
        try:
            with engine.connect() as connection:
                return list(connection.execute(sa.text(f"SELECT * FROM {table}")))
        finally:
            engine.dispose()


def _db_flag(path: Path, ledger: str | None) -> list[str]:
    return [] if ledger else ["--db", str(path)]


def create_keys(config: Path, db: Path, keys: dict[str, list[str]], ledger: str | None = None) -> dict[str, str]:
    """`margin keys create --name <name> <flags> --json` for each key (name → flags), as an operator runs it, in
    one subprocess (tests/security/make_keys.py); name → key."""
    if not keys:
        return {}
    command = [sys.executable, "-m", "tests.security.make_keys", "--config", str(config), *_db_flag(db, ledger)]
    for name, flags in keys.items():
        command += ["--", name, *flags]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120, cwd=ROOT)
    made: dict[str, str] = json.loads(result.stdout)
    return made


ServeFactory = Callable[..., AbstractContextManager[Served]]


def serving_in(tmp_path: Path) -> ServeFactory:
    """`with serving_in(folder)(overrides, keys=…) as gw:` — `served` for a fixture of a wider scope."""

    @contextmanager
    def start(
        overrides: dict[str, Any] | None = None,
        keys: dict[str, list[str]] | None = None,
        extra: list[str] | None = None,
        ledger: str | None = None,
    ) -> Iterator[Served]:
        config_path, db_file = tmp_path / "margin.yaml", tmp_path / "ledger.db"
        config = {**FAKE_CONFIG, **(overrides or {})}
        if ledger:
            config["storage"] = {**config.get("storage", {}), "ledger": ledger}
        config_path.write_text(yaml.safe_dump(config))
        created = create_keys(config_path, db_file, keys or {}, ledger)
        serving = margin_serve(
            None if ledger else db_file, tmp_path / "serve.log", config=config_path, extra=extra, ready_s=180
        )
        with serving as (url, process):
            yield Served(url, process, db_file, config_path, created, ledger)

    return start


@pytest.fixture
def served(tmp_path: Path) -> ServeFactory:
    """`with served(overrides, keys={"admin": ["--admin"], "t": ["--team", "a"]}) as gw:` — a running gateway
    whose config is FAKE_CONFIG updated with `overrides` (top-level keys replaced), with those keys created.
    `ledger`: a PostgreSQL URL to use instead of the temporary SQLite file."""
    return serving_in(tmp_path)
