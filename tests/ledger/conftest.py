"""Fixtures of the ledger tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from margin.ledger import db


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A migrated SQLite ledger (a module may override it, e.g. with both databases)."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    db.upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def both_ledgers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """A migrated, empty ledger on each database: SQLite in the test's directory, PostgreSQL a database of its own
    on the session's server."""
    url = f"sqlite:///{tmp_path / 't.db'}" if request.param == "sqlite" else request.getfixturevalue("fresh_postgres")
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    yield engine
    engine.dispose()
