"""Engines and migrations. The user writes one URL (sqlite:///margin.db or postgresql://…); margin picks
the async driver for the server and the sync one for migrations and reports."""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from margin.errors import ConfigError, LedgerRevision
from margin.urls import hide_password

_ASYNC = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_SYNC = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}
MIGRATION_LOCK = 0x6D617267696E  # the PostgreSQL advisory lock migrations run under ("margin" in ASCII)
MIGRATION_POLL_S = 0.25  # how often a process waiting for another's migration tries the lock
UNREACHABLE = (sa.exc.SQLAlchemyError, OSError)
"""What a ledger query raises when the database is down, slow or locked: SQLAlchemy's errors, and the OSError
asyncpg raises itself when it cannot connect (ConnectionRefusedError, a timeout), which SQLAlchemy passes on
unwrapped."""


def _dialect(url: str) -> tuple[str, sa.URL]:
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError) as exc:  # ValueError: a port that is no number
        raise ConfigError(f"storage.ledger is not a database URL: {hide_password(url)!r}") from exc
    base = parsed.drivername.split("+")[0]
    if base not in _ASYNC:
        raise ConfigError(f"storage.ledger: unsupported database {base!r} (sqlite or postgresql)")
    return base, parsed


def async_url(url: str) -> sa.URL:
    base, parsed = _dialect(url)
    return parsed.set(drivername=_ASYNC[base])


def sync_url(url: str) -> sa.URL:
    base, parsed = _dialect(url)
    return parsed.set(drivername=_SYNC[base])


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
    math_functions(dbapi_connection)


def math_functions(dbapi_connection: Any) -> None:
    """ln() and floor(), which the latency histogram's bins need: built into SQLite >= 3.35 where compiled in,
    else Python's."""
    try:
        dbapi_connection.execute("SELECT ln(1), floor(1.5)")
    except sqlite3.OperationalError:
        dbapi_connection.create_function("ln", 1, math.log, deterministic=True)
        dbapi_connection.create_function("floor", 1, math.floor, deterministic=True)


def sqlite_file(url: str | sa.URL) -> str | None:
    """The database file of a SQLite URL; None for another database, or a SQLite one in memory."""
    url = sa.make_url(url)
    if url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:"):
        return url.database
    return None


def _prepare_sqlite_file(url: sa.URL) -> None:
    if (database := sqlite_file(url)) is not None:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def make_sync_engine(url: str) -> sa.Engine:
    target = sync_url(url)
    if target.drivername != "sqlite":
        return sa.create_engine(target, pool_pre_ping=True)
    # one ingest batch runs ~75 distinct statements (+4 per rolled-up tag key beyond two), each prepared once
    # per connection only while it stays in the driver's cache (128 statements by default)
    engine = sa.create_engine(target, connect_args={"cached_statements": 512})
    _prepare_sqlite_file(target)
    sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_read_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA busy_timeout=5000")  # no journal_mode: setting it writes the file's header
    math_functions(dbapi_connection)


def read_only_engine(url: str) -> sa.Engine:
    """An engine that cannot write: a SQLite file opened read-only (`mode=ro`; one that is not there is an
    error, not a new empty file), PostgreSQL's transactions READ ONLY. SQLite in memory: an ordinary one."""
    target = sync_url(url)
    if target.drivername != "sqlite":
        return sa.create_engine(target, execution_options={"postgresql_readonly": True})
    if (database := sqlite_file(target)) is None:
        return make_sync_engine(url)
    path = Path(database).expanduser().absolute()
    query = {"mode": "ro", "uri": "true"}
    if not os.access(path.parent, os.W_OK) and not Path(f"{path}-shm").exists():
        # a read-only folder: no writer can journal there, and a WAL file's reader could not make its -shm
        query["immutable"] = "1"
    engine = sa.create_engine(target.set(database=path.as_uri(), query=query))
    sa.event.listen(engine, "connect", _sqlite_read_pragmas)
    return engine


def _revision(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _known(revision: str) -> bool:
    with make_sync_engine("sqlite://").connect() as connection:
        scripts = ScriptDirectory.from_config(_alembic_config(connection))
        try:
            scripts.get_revision(revision)
        except CommandError:
            return False
    return True


def check_revision(engine: sa.Engine, upgrade_hint: str) -> None:
    """Refuse a ledger that is not at this margin's head revision (LedgerRevision), reading only: an older one
    is upgraded by `upgrade_hint`, which a command that only reads never runs for its user."""
    current, head = _revision(engine), head_revision()
    if current == head:
        return
    if current is None:
        raise LedgerRevision(f"the database is not a margin ledger (no migration revision): {upgrade_hint} makes one")
    if not _known(current):
        raise LedgerRevision(
            f"the ledger is at revision {current}, which this margin (head {head}) does not know: a newer margin "
            "migrated it; read it with that version"
        )
    raise LedgerRevision(
        f"the ledger is at revision {current}, older than this margin's {head}; this command only reads and "
        f"does not upgrade it: run {upgrade_hint} first (it writes to the ledger; `margin serve` also upgrades "
        "it at start)"
    )


def make_async_engine(url: str) -> AsyncEngine:
    target = async_url(url)
    # PostgreSQL: a pooled connection is checked before use (one round trip per checkout, none per request on
    # the common path: keys are cached, counters seeded once), so a database restart fails no read afterwards;
    # before, the first query on each stale connection failed (a 500 on /admin/budgets, a 503 on a request)
    engine = create_async_engine(target, pool_pre_ping=not target.drivername.startswith("sqlite"))
    if target.drivername.startswith("sqlite"):
        _prepare_sqlite_file(target)
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _alembic_config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    return config


def _migrate(url: str, step: Callable[[Config, str], None], revision: str) -> None:
    engine = make_sync_engine(url)
    try:
        if engine.dialect.name == "postgresql":
            with engine.connect() as connection:
                _migrate_postgres(connection, step, revision)
        else:
            with engine.begin() as connection:
                step(_alembic_config(connection), revision)
    finally:
        engine.dispose()


def _migrate_postgres(connection: sa.Connection, step: Callable[[Config, str], None], revision: str) -> None:
    """On PostgreSQL one process migrates at a time: the others wait for a session advisory lock (it outlives
    the commits between migrations) and then find nothing left to do. Alembic owns the transactions, so a
    migration can step out of them to build an index CONCURRENTLY (0014), which lets the ledger's writers on.
    Such a build waits for every open transaction, so the others wait outside of one: they try the lock, end
    the transaction and sleep (waiting inside `pg_advisory_lock` deadlocks with the build)."""
    lock = {"key": MIGRATION_LOCK}
    while not connection.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), lock).scalar_one():
        connection.commit()
        time.sleep(MIGRATION_POLL_S)
    connection.commit()
    try:
        step(_alembic_config(connection), revision)
    finally:
        connection.rollback()  # a failed migration's transaction, if any
        connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), lock)
        connection.commit()


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate to `revision`. Two replicas starting together on an empty SQLite file race: the loser's DDL
    fails, and it then only has to see that the winner reached head (PostgreSQL's take turns: `_migrate`)."""
    try:
        _migrate(url, command.upgrade, revision)
    except (sa.exc.OperationalError, sa.exc.IntegrityError, sa.exc.ProgrammingError):
        time.sleep(1.0)
        if revision != "head" or current_revision(url) != head_revision():
            raise


def downgrade(url: str, revision: str) -> None:
    _migrate(url, command.downgrade, revision)


def current_revision(url: str) -> str | None:
    """The ledger's revision, read without writing (None: no margin ledger there, a SQLite file not there
    included, which this does not create)."""
    if (database := sqlite_file(url)) is not None and not Path(database).expanduser().exists():
        return None
    engine = read_only_engine(url)
    try:
        return _revision(engine)
    finally:
        engine.dispose()


def head_revision() -> str | None:
    with make_sync_engine("sqlite://").connect() as connection:
        return ScriptDirectory.from_config(_alembic_config(connection)).get_current_head()
