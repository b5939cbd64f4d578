from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import Gateway, fake_settings, gateway


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
async def gw(db_path: Path) -> AsyncIterator[Gateway]:
    async with gateway(fake_settings(db_path)) as g:
        yield g
