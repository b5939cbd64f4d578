"""Migrations on a live PostgreSQL ledger: 0014 rebuilds the latency indexes without holding the ledger's
writers, resumes after a build that failed half-way, and replicas that start together take turns; 0015
rewrites the stored tasks as each tenant's own."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from margin.ledger import db
from margin.ledger.ids import request_id
from margin.ledger.models import ledger
from tests.ledger.rows import row
from tests.ledger.test_migrations import BIN_INDEXES, check_0015

OLD_INDEXES = ("ix_ledger_e2e_created", "ix_ledger_ttft_created")
LATER_COLUMNS = frozenset({"service_tier"})  # ledger columns added after 0014 (0018): not there to append to
WAITING_DDL = sa.text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND wait_event_type = 'Lock' AND query ILIKE '%index%'"
)


def indexes(engine: sa.Engine) -> dict[str, bool]:
    """The ledger's index names, each with whether PostgreSQL may use it (a failed CONCURRENTLY build is not)."""
    query = sa.text(
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = 'ledger'::regclass"
    )
    with engine.connect() as connection:
        return {str(r[0]): bool(r[1]) for r in connection.execute(query)}


def assert_at_head_with_valid_bin_indexes(url: str, engine: sa.Engine) -> None:
    assert db.current_revision(url) == db.head_revision()
    found = indexes(engine)
    assert {name: found.get(name) for name in BIN_INDEXES} == dict.fromkeys(BIN_INDEXES, True)
    assert not set(found) & set(OLD_INDEXES)


def wait_for_waiting_ddl(engine: sa.Engine, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    with engine.connect() as connection:
        while connection.execute(WAITING_DDL).scalar_one() == 0:
            connection.rollback()  # pg_stat_activity is read once per transaction
            assert time.monotonic() < deadline, "the migration never reached its index statements"
            time.sleep(0.05)


def test_0014_rebuilds_the_indexes_while_the_ledger_takes_appends(fresh_postgres: str) -> None:
    """A writer's transaction is open when the upgrade starts, so the index build waits for it (any build
    does). A plain DROP/CREATE INDEX queues a lock that every later append waits behind; the online build
    (CONCURRENTLY) lets the next append in at once."""
    db.upgrade(fresh_postgres, "0013")
    engine = db.make_sync_engine(fresh_postgres)
    try:
        holder = engine.connect()
        holder.begin()
        holder.execute(sa.text("LOCK TABLE ledger IN ROW EXCLUSIVE MODE"))  # what an append in flight holds
        with ThreadPoolExecutor(1) as pool:
            upgrade = pool.submit(db.upgrade, fresh_postgres)
            wait_for_waiting_ddl(engine)
            with engine.begin() as writer:
                writer.execute(sa.text("SET LOCAL lock_timeout = '3s'"))
                appended = {k: v for k, v in row(request_id()).items() if k not in LATER_COLUMNS}
                writer.execute(ledger.insert(), [appended])  # an append while the index is being built
            holder.commit()
            holder.close()
            upgrade.result(120)
        assert_at_head_with_valid_bin_indexes(fresh_postgres, engine)
        with engine.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(ledger)).scalar_one() == 1
    finally:
        engine.dispose()


def test_an_upgrade_that_failed_half_way_through_0014_is_resumed(fresh_postgres: str) -> None:
    """A CONCURRENTLY build that fails (a cancelled statement, a lost connection) leaves its index behind,
    invalid, and the revision at 0013: the next upgrade builds it again instead of stopping at its name."""
    db.upgrade(fresh_postgres, "0013")
    engine = db.make_sync_engine(fresh_postgres)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE INDEX ix_ledger_e2e_bin ON ledger (e2e_ms)"))
            connection.execute(
                sa.text("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'ix_ledger_e2e_bin'::regclass")
            )
        assert indexes(engine)["ix_ledger_e2e_bin"] is False
        db.upgrade(fresh_postgres)
        assert_at_head_with_valid_bin_indexes(fresh_postgres, engine)
    finally:
        engine.dispose()


def test_replicas_that_start_together_migrate_in_turn(fresh_postgres: str) -> None:
    """Three processes' start-up upgrades of one empty database at once: each returns, none fails, and the
    schema is whole (the advisory lock makes the later ones find the work done)."""
    with ThreadPoolExecutor(3) as pool:
        upgrades = [pool.submit(db.upgrade, fresh_postgres) for _ in range(3)]
        assert [upgrade.result(120) for upgrade in upgrades] == [None] * 3  # each returned, none raised
    engine = db.make_sync_engine(fresh_postgres)
    try:
        assert_at_head_with_valid_bin_indexes(fresh_postgres, engine)
    finally:
        engine.dispose()


def test_0015_makes_each_tenants_task_its_own_and_back(fresh_postgres: str, monkeypatch: pytest.MonkeyPatch) -> None:
    check_0015(fresh_postgres, monkeypatch)
