"""Fixtures of the ledger tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from margin.ledger import db


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A migrated SQLite ledger (a module may override it, e.g. with both databases)."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    db.upgrade(url)
    return url
