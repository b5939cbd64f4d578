"""Migrations from an empty database, and the migrated schema equals the declared tables."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from margin.ledger import db
from margin.ledger.models import metadata


def test_upgrade_from_empty_matches_models_and_downgrades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    assert db.current_revision(url) is None
    db.upgrade(url)
    assert db.current_revision(url) == db.head_revision()
    engine = db.make_sync_engine(url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), metadata)
        assert diff == []
        assert {"ledger", "api_keys"} <= set(sa.inspect(connection).get_table_names())
    engine.dispose()
    db.upgrade(url)  # idempotent
    db.downgrade(url, "base")
    engine = db.make_sync_engine(url)
    with engine.connect() as connection:
        assert set(sa.inspect(connection).get_table_names()) == {"alembic_version"}
    engine.dispose()


def test_migrations_on_postgres(postgres_url: str) -> None:
    db.downgrade(postgres_url, "base")
    db.upgrade(postgres_url)
    assert db.current_revision(postgres_url) == db.head_revision()
    engine = db.make_sync_engine(postgres_url)
    try:
        with engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), metadata) == []
    finally:
        engine.dispose()
    db.downgrade(postgres_url, "base")
    db.upgrade(postgres_url)


def test_0004_backfills_the_rollup_from_existing_rows(tmp_path: Path) -> None:
    from margin.report.queries import Window, summarize
    from tests.report.ledgers import ROWS, complete

    url = f"sqlite:///{tmp_path / 'old.db'}"
    db.upgrade(url, "0003")
    engine = db.make_sync_engine(url)
    old = sa.Table("ledger", sa.MetaData(), autoload_with=engine)
    with engine.begin() as connection:
        rows = [{k: v for k, v in complete(r).items() if k != "busy_ms"} for r in ROWS]
        connection.execute(old.insert(), rows)
    engine.dispose()
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    from_rollup, from_rows = summarize(engine, Window()), summarize(engine, Window(rollup=False))
    by_team = summarize(engine, Window(), "team")
    engine.dispose()
    assert from_rollup == from_rows and from_rollup["totals"]["requests"] == len(ROWS)
    assert from_rollup["totals"]["cost_usd"] == "0.007000000" and by_team["groups"][0]["requests"] == len(ROWS)
