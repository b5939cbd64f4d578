"""The report tests' ledger: `tests.report.ledgers.load`'s rows in a fresh SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from margin.ledger import db
from tests.report.ledgers import load


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    load(engine)
    yield engine
    engine.dispose()
