"""`margin db index-tags` builds the tag-value indexes one committed step at a time (margin.ledger.tag_index.
sync_steps): the ledger's writers wait for one index's build, not for every key's in one transaction; a run cut
between steps leaves the finished ones, the next run does the rest and none twice; on PostgreSQL the builds are
CONCURRENT and an INVALID index left by a cut one is rebuilt."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from margin.cli import app
from margin.ledger import db, ingest, tag_index
from tests.report.ledgers import complete, row

KEYS = ("customer", "project", "tenant")


def _ledger(db_path: Path, tmp_path: Path) -> Path:
    url = f"sqlite:///{db_path}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    with engine.begin() as connection:
        ingest.ingest_batch(connection, [complete(row(f"r{n}", tags={"customer": f"c{n}"})) for n in range(50)])
        connection.exec_driver_sql('DROP INDEX "ix_ledger_tag_customer"')  # migration 0027's: three to build
    engine.dispose()
    config = tmp_path / "margin.yaml"
    config.write_text(f"tags:\n  indexed_keys: [{', '.join(KEYS)}]\n")
    return config


@contextmanager
def before_each_build(step: Any) -> Iterator[None]:
    """`step(n)` before the n-th CREATE INDEX any engine runs (n from 0)."""
    seen = [0]

    def hook(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("CREATE INDEX"):
            seen[0] += 1
            step(seen[0] - 1)

    sa.event.listen(sa.Engine, "before_cursor_execute", hook)
    try:
        yield
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", hook)


def _index_tags(config: Path, db_path: Path) -> Any:
    return CliRunner().invoke(app, ["db", "index-tags", "--config", str(config), "--db", str(db_path)])


def _indexes(db_path: Path) -> list[str]:
    with sqlite3.connect(db_path) as connection:
        found = connection.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'ix_ledger_tag%'")
        return sorted(name for (name,) in found)


def test_a_writer_gets_the_ledger_between_two_index_builds(db_path: Path, tmp_path: Path) -> None:
    """SQLite: each build commits before the next (the driver ran each CREATE INDEX on its own before too)."""
    config, wrote = _ledger(db_path, tmp_path), []

    def write(n: int) -> None:
        if n > 0:  # a build is done: the ledger's write lock is free for an ingest before the next one
            with sqlite3.connect(db_path, timeout=0) as writer:
                writer.execute("CREATE TABLE IF NOT EXISTS probe (n INTEGER)")
                writer.execute("INSERT INTO probe VALUES (?)", (n,))
            wrote.append(n)

    with before_each_build(write):
        result = _index_tags(config, db_path)
    assert result.exit_code == 0, result.output
    assert wrote == [1, 2] and _indexes(db_path) == [f"ix_ledger_tag_{key}" for key in KEYS]


@pytest.mark.integration
def test_postgres_ingest_is_not_locked_out_by_the_builds(fresh_postgres: str, tmp_path: Path) -> None:
    """PostgreSQL: before, every build ran in the command's one transaction, and each CREATE INDEX's SHARE lock
    on the ledger was held to its end: an ingest (ROW EXCLUSIVE) waited for all of them (this test failed on the
    old code: lock timeout). Now each build is CONCURRENT and its own statement."""
    import psycopg

    db.upgrade(fresh_postgres)
    config = tmp_path / "margin.yaml"
    config.write_text(f"storage:\n  ledger: {fresh_postgres}\ntags:\n  indexed_keys: [{', '.join(KEYS)}]\n")
    plain, locked = fresh_postgres.replace("postgresql+psycopg://", "postgresql://"), []

    def ingest_lock(n: int) -> None:
        with psycopg.connect(plain) as writer:  # what an INSERT takes, bounded by a generous timeout
            writer.execute("SET lock_timeout = '10s'")
            try:
                writer.execute("LOCK TABLE ledger IN ROW EXCLUSIVE MODE")
            except psycopg.errors.LockNotAvailable:
                locked.append(n)

    with before_each_build(ingest_lock):
        result = CliRunner().invoke(app, ["db", "index-tags", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert locked == [] and "ix_ledger_tag_project, ix_ledger_tag_tenant" in " ".join(result.output.split())


def test_a_run_cut_between_builds_is_finished_by_the_next(db_path: Path, tmp_path: Path) -> None:
    config = _ledger(db_path, tmp_path)

    def crash(n: int) -> None:
        if n == 2:
            raise KeyboardInterrupt("killed between two builds")

    with before_each_build(crash):
        cut = _index_tags(config, db_path)
    assert cut.exit_code != 0
    assert _indexes(db_path) == ["ix_ledger_tag_customer", "ix_ledger_tag_project"]  # the two before: committed
    again = _index_tags(config, db_path)
    assert again.exit_code == 0, again.output
    assert _indexes(db_path) == ["ix_ledger_tag_customer", "ix_ledger_tag_project", "ix_ledger_tag_tenant"]
    with sqlite3.connect(db_path) as connection:
        assert connection.execute("SELECT count(*) FROM ledger").fetchone() == (50,)  # rows untouched
    assert tag_index.sync_steps(db.make_sync_engine(f"sqlite:///{db_path}"), KEYS) == []  # nothing left to do


@pytest.mark.integration
def test_postgres_builds_concurrently_and_rebuilds_an_invalid_index(fresh_postgres: str) -> None:
    db.upgrade(fresh_postgres)
    engine = db.make_sync_engine(fresh_postgres)
    try:
        with engine.begin() as connection:  # what a cut CREATE INDEX CONCURRENTLY leaves behind
            connection.exec_driver_sql(
                "UPDATE pg_index SET indisvalid = false WHERE indexrelid = '\"ix_ledger_tag_customer\"'::regclass"
            )
        with engine.connect() as connection:
            assert tag_index.existing(connection) == set()
            assert tag_index.existing(connection, valid=False) == {"ix_ledger_tag_customer"}
        steps = tag_index.sync_steps(engine, ["customer", "tenant"])
        assert steps[0] == 'DROP INDEX CONCURRENTLY IF EXISTS "ix_ledger_tag_customer"'
        assert all("CONCURRENTLY" in step for step in steps) and len(steps) == 3
        with engine.connect() as connection:
            assert tag_index.existing(connection) == {"ix_ledger_tag_customer", "ix_ledger_tag_tenant"}
            assert tag_index.existing(connection, valid=False) == set()
        assert tag_index.sync_steps(engine, ["customer", "tenant"]) == []
    finally:
        engine.dispose()


@pytest.mark.integration
def test_postgres_sync_in_a_migration_rebuilds_an_invalid_index_with_a_wanted_name(fresh_postgres: str) -> None:
    """`sync` (migration 0027's) drops and rebuilds an INVALID index it wants: CREATE ... IF NOT EXISTS alone is a
    no-op on it, and the index would stay one no query uses."""
    db.upgrade(fresh_postgres)
    engine = db.make_sync_engine(fresh_postgres)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "UPDATE pg_index SET indisvalid = false WHERE indexrelid = '\"ix_ledger_tag_customer\"'::regclass"
            )
        with engine.begin() as connection:
            tag_index.sync(connection, ["customer"])
        with engine.connect() as connection:
            assert tag_index.existing(connection) == {"ix_ledger_tag_customer"}
            assert tag_index.existing(connection, valid=False) == set()
    finally:
        engine.dispose()


def test_sync_and_sync_steps_plan_the_same_steps() -> None:
    """One planner: an INVALID index is dropped (then rebuilt if wanted), an unwanted one dropped, a missing one
    built; CONCURRENTLY only where asked (`sync_steps` on PostgreSQL)."""
    have, broken = {"ix_ledger_tag_project"}, {"ix_ledger_tag_customer"}
    steps = tag_index.plan("postgresql", have, broken, ["customer", "tenant"], concurrently=False)
    assert steps == [
        'DROP INDEX IF EXISTS "ix_ledger_tag_customer"', 'DROP INDEX IF EXISTS "ix_ledger_tag_project"',
        tag_index.create_sql("postgresql", "customer"), tag_index.create_sql("postgresql", "tenant"),
    ]  # fmt: skip
    concurrent = tag_index.plan("postgresql", have, broken, ["customer", "tenant"], concurrently=True)
    assert all("CONCURRENTLY" in step for step in concurrent) and len(concurrent) == 4
    assert tag_index.plan("sqlite", {"ix_ledger_tag_customer"}, set(), ["customer"], concurrently=False) == []
