"""Migrations from an empty database, and the migrated schema equals the declared tables."""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from margin.ledger import db, measures, read, rollup, tag_index
from margin.ledger.models import feedback, ledger, ledger_task_daily, ledger_tasks, metadata
from margin.ledger.read import Window
from tests.ledger import tenants

VERSIONS = Path(db.__file__).parent / "migrations" / "versions"
BIN_INDEXES = {"ix_ledger_e2e_bin": "e2e_ms", "ix_ledger_ttft_bin": "ttft_ms"}


def _not_an_expression_index(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    return not (type_ == "index" and (name in BIN_INDEXES or (name or "").startswith(tag_index.PREFIX)))


def schema_diff(connection: sa.Connection) -> list[Any]:
    """The migrated schema against the declared tables. Alembic does not compare expression indexes (SQLite's
    reflection skips them with a warning; PostgreSQL's text never equals the declared one): those are checked
    by `bin_index_definitions`, and the tag-value indexes (margin.ledger.tag_index) by test_tag_spent.py."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
        warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression-based index")
        context = MigrationContext.configure(connection, opts={"include_object": _not_an_expression_index})
        return list(compare_metadata(context, metadata))


def bin_index_definitions(connection: sa.Connection) -> dict[str, str]:
    if connection.dialect.name == "sqlite":
        query = sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND name IN :names")
    else:
        query = sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE indexname IN :names")
    query = query.bindparams(sa.bindparam("names", expanding=True))
    return {name: sql.lower() for name, sql in connection.execute(query, {"names": list(BIN_INDEXES)})}


def assert_bin_indexes(connection: sa.Connection) -> None:
    found = bin_index_definitions(connection)
    assert set(found) == set(BIN_INDEXES)
    for name, column in BIN_INDEXES.items():
        assert f"ln({column})" in found[name] and "created_at" in found[name] and "kind" in found[name]


def test_upgrade_from_empty_matches_models_and_downgrades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    assert db.current_revision(url) is None
    db.upgrade(url)
    assert db.current_revision(url) == db.head_revision()
    engine = db.make_sync_engine(url)
    with engine.connect() as connection:
        assert schema_diff(connection) == []
        assert_bin_indexes(connection)
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
            assert schema_diff(connection) == []
            assert_bin_indexes(connection)
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


def test_0005_backfills_integers_and_rollups_and_downgrades(tmp_path: Path) -> None:
    from margin.ledger import rollup
    from margin.report.business import tasks
    from margin.report.queries import Window, summarize
    from tests.report.ledgers import ROWS, complete

    url = f"sqlite:///{tmp_path / 'old.db'}"
    db.upgrade(url, "0004")  # rows written under 0004's insert trigger
    engine = db.make_sync_engine(url)
    old = sa.Table("ledger", sa.MetaData(), autoload_with=engine)
    with engine.begin() as connection:
        connection.execute(old.insert(), [complete(r) for r in ROWS])
    engine.dispose()
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    with engine.connect() as connection:
        assert rollup.rolled_up_keys(connection) == ("customer", "feature")
        energy = connection.exec_driver_sql("SELECT energy_uj, co2e_ng FROM ledger WHERE request_id = 'r3'").one()
        triggers = connection.exec_driver_sql("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").scalar()
    assert tuple(energy) == (3_600_000_000_000, 56_000_000_000) and triggers == 0
    from_rollup, from_rows = (
        summarize(engine, Window(), "customer"),
        summarize(engine, Window(rollup=False), "customer"),
    )
    assert from_rollup == from_rows and from_rollup["totals"]["requests"] == len(ROWS)
    assert [t.to_json() for t in tasks(engine, Window(), "feature")] == [
        t.to_json() for t in tasks(engine, Window(rollup=False), "feature")
    ]
    engine.dispose()
    db.downgrade(url, "0004")  # the trigger and its rollup come back, backfilled
    engine = db.make_sync_engine(url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT sum(requests) FROM ledger_hourly").scalar() == len(ROWS)
    engine.dispose()
    db.upgrade(url)


def test_0009_and_0010_rebuild_the_rollups_and_link_feedback_to_tasks(tmp_path: Path) -> None:
    """A ledger with feedback under 0008: after the upgrade every rollup holds its rows again (0009 recreated
    two of them) and each feedback row names its request's task (0010), so the tasks read equals the rows'."""
    from margin.report.business import tasks
    from margin.report.queries import Window, summarize
    from tests.report.ledgers import FEEDBACK, ROWS, at, complete

    url = f"sqlite:///{tmp_path / 'old.db'}"
    db.upgrade(url, "0008")
    engine = db.make_sync_engine(url)
    old = sa.MetaData()
    old_ledger = sa.Table("ledger", old, autoload_with=engine)
    old_feedback = sa.Table("feedback", old, autoload_with=engine)
    stamp = {"created_at": at(4), "updated_at": at(4), "key_id": "k1", "revisions": 1}
    with engine.begin() as connection:
        names = {c.name for c in old_ledger.columns}
        connection.execute(old_ledger.insert(), [{k: v for k, v in complete(r).items() if k in names} for r in ROWS])
        connection.execute(old_feedback.insert(), [{**f, **stamp} for f in FEEDBACK])
    engine.dispose()
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    with engine.connect() as connection:
        linked: dict[str, str | None] = dict(connection.exec_driver_sql("SELECT request_id, task FROM feedback").all())
        attach = connection.exec_driver_sql("SELECT count(*) FROM ledger_attach").scalar()
    assert linked and all(task is not None and task[:2] in ("t:", "r:") for task in linked.values())
    assert attach and summarize(engine, Window(), "customer") == summarize(engine, Window(rollup=False), "customer")
    graded = [t.to_json() for t in tasks(engine, Window(), "feature")]
    assert graded == [t.to_json() for t in tasks(engine, Window(rollup=False), "feature")]
    assert sum(t["graded_tasks"] for t in graded) > 0
    engine.dispose()


def test_an_older_release_s_rollups_without_today_s_measures_upgrade(tmp_path: Path) -> None:
    """A ledger an older release left between 0009 and 0018 with empty rollups: its ledger_hourly and ledger_daily
    were made by that release's declarations, without the measures added since (0028's co2e_tokens and
    energy_tokens). 0019 rebuilds such rollups with today's SQL, which writes those columns: the upgrade stopped
    there with "no such column". The older tables are made here by dropping the columns after 0018."""
    url = f"sqlite:///{tmp_path / 'older.db'}"
    db.upgrade(url, "0018")
    engine = db.make_sync_engine(url)
    with engine.begin() as connection:
        for table in ("ledger_hourly", "ledger_daily"):
            for column in ("co2e_tokens", "energy_tokens"):
                connection.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
    engine.dispose()
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    with engine.connect() as connection:
        for table in ("ledger_hourly", "ledger_daily"):
            assert {"co2e_tokens", "energy_tokens"} <= {c["name"] for c in sa.inspect(connection).get_columns(table)}
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == db.head_revision()
    engine.dispose()


def migration(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"m{name[:4]}", VERSIONS / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bin_indexes_are_keyed_by_the_read_models_bin() -> None:
    """The migration froze the bin expression; the read model's must stay the same, or its queries would not
    match the index (and SQLite's INDEXED BY would fail)."""
    module = migration("0014_latency_bin_indexes.py")
    assert module.latency_bin("e2e_ms") == measures.latency_bin("e2e_ms")


def test_0015_writes_the_tasks_as_the_read_model_identifies_them() -> None:
    """The migration froze the task's identity; the read model's must stay the same (or need a migration)."""
    module = migration("0015_task_tenant.py")
    for dialect in ("sqlite", "postgresql"):
        assert module.task("new", dialect, "ledger") == measures.task(dialect, "ledger")
    lengths = {
        table.c.task.type.length for table in (ledger_tasks, feedback) if isinstance(table.c.task.type, sa.String)
    }
    assert lengths == {module.LENGTHS["new"]}


def old_task(dialect: str, r: str) -> str:
    """measures.task before 0015: one task T for every tenant."""
    return f"COALESCE('t:' || {measures.tag(dialect, r, 'task_id')}, 'r:' || {r}.request_id)"


def stored_tasks(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """The stored task identities and what they add up (no ledger_task_daily row that counts no task)."""
    with engine.connect() as connection:
        daily = sa.select(ledger_task_daily).where(ledger_task_daily.c.tasks != 0)
        linked = sa.select(feedback.c.request_id, feedback.c.task)
        return {
            name: sorted(map(tuple, connection.execute(query)), key=str)
            for name, query in (("tasks", sa.select(ledger_tasks)), ("daily", daily), ("feedback", linked))
        }


@contextmanager
def todays_columns(engine: sa.Engine) -> Iterator[None]:
    """The ledger columns added after this revision (0018's `service_tier`…), for the duration of the block:
    today's ingest writes every column it knows, so rows written by it at an old revision need them there."""
    with engine.begin() as connection:
        present = {column["name"] for column in sa.inspect(connection).get_columns("ledger")}
        later = [column for column in ledger.columns if column.name not in present]
        for column in later:
            kind = column.type.compile(dialect=connection.dialect)
            connection.exec_driver_sql(f'ALTER TABLE ledger ADD COLUMN "{column.name}" {kind}')
    try:
        yield
    finally:
        with engine.begin() as connection:
            for column in later:
                connection.exec_driver_sql(f'ALTER TABLE ledger DROP COLUMN "{column.name}"')


def check_0015(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tasks and feedback written at 0014 by 0014's code (the tenants share task T): the upgrade rewrites them
    as a rebuild by today's code computes them, each tenant's task its own; the downgrade writes them back."""
    db.upgrade(url, "0014")
    engine = db.make_sync_engine(url)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(measures, "task", old_task)
            with todays_columns(engine):
                tenants.fill(engine)
        old = stored_tasks(engine)
        assert {task for _, task in old["feedback"]} == {"t:T"}
        db.upgrade(url)
        new = stored_tasks(engine)
        assert dict(new["feedback"]) == tenants.TASKS
        with engine.connect() as connection:
            alpha = Window(team="alpha")
            for window in (alpha, tenants.rows_path(alpha)):
                assert read.task_sums(connection, window) == {None: tenants.ALPHA}, window
        with engine.begin() as connection:
            rollup.rebuild(connection)
        assert stored_tasks(engine) == new
        db.downgrade(url, "0014")
        assert stored_tasks(engine) == old
        db.upgrade(url)
        assert stored_tasks(engine) == new
    finally:
        engine.dispose()


def test_0015_makes_each_tenants_task_its_own_and_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_0015(f"sqlite:///{tmp_path / 't.db'}", monkeypatch)


def test_0014_keys_the_latency_indexes_by_bin_and_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    db.upgrade(url, "0013")
    engine = db.make_sync_engine(url)
    with engine.connect() as connection:
        names = {r[0] for r in connection.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"ix_ledger_e2e_created", "ix_ledger_ttft_created"} <= names
    db.upgrade(url)
    with engine.connect() as connection:
        names = {r[0] for r in connection.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert_bin_indexes(connection)
    assert not names & {"ix_ledger_e2e_created", "ix_ledger_ttft_created"}
    db.downgrade(url, "0013")
    with engine.connect() as connection:
        names = {r[0] for r in connection.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"ix_ledger_e2e_created", "ix_ledger_ttft_created"} <= names and not names & set(BIN_INDEXES)
    engine.dispose()


def test_0018_adds_the_service_tier_and_keeps_rows_and_indexes_both_ways(tmp_path: Path) -> None:
    """A nullable column: the rows before it read NULL; the downgrade drops the column in place (a batch copy
    of the table would lose the expression indexes SQLite's reflection skips)."""
    from tests.report.ledgers import ROWS, complete

    url = f"sqlite:///{tmp_path / 't.db'}"
    db.upgrade(url, "0017")
    engine = db.make_sync_engine(url)
    with engine.connect() as connection:
        present = {column["name"] for column in sa.inspect(connection).get_columns("ledger")}
    old = sa.Table("ledger", sa.MetaData(), *(sa.Column(c.name, c.type) for c in ledger.columns if c.name in present))
    assert "service_tier" not in old.c
    with engine.begin() as connection:
        connection.execute(old.insert(), [{k: v for k, v in complete(r).items() if k in old.c} for r in ROWS])
    db.upgrade(url)
    with engine.begin() as connection:
        tiers = connection.exec_driver_sql("SELECT DISTINCT service_tier FROM ledger").scalars().all()
        connection.exec_driver_sql("UPDATE ledger SET service_tier = 'flex' WHERE request_id = 'r1'")
        assert_bin_indexes(connection)
    assert tiers == [None]
    db.downgrade(url, "0017")
    with engine.connect() as connection:
        columns = {c["name"] for c in sa.inspect(connection).get_columns("ledger")}
        assert "service_tier" not in columns and "default_co2e_g" in columns
        assert connection.exec_driver_sql("SELECT count(*) FROM ledger").scalar() == len(ROWS)
        assert_bin_indexes(connection)
    engine.dispose()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_0021_adds_file_expiry_and_keeps_files_both_ways(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Nullable columns and an index: files stored before it read NULL (kept until deleted, as they were), and
    the downgrade drops them in place, keeping every file."""
    url = f"sqlite:///{tmp_path / 'e.db'}" if dialect == "sqlite" else request.getfixturevalue("fresh_postgres")
    db.upgrade(url, "0020")
    engine = db.make_sync_engine(url)
    file_row = "INSERT INTO batch_files (id, purpose, filename, bytes, lines, content, created_at) VALUES "
    with engine.begin() as connection:
        connection.execute(
            sa.text(file_row + "('file-a', 'batch', 'a.jsonl', 2, 1, :content, :at)"),
            {"content": b"{}", "at": "2026-12-06 12:00:00"},
        )
    db.upgrade(url)
    with engine.begin() as connection:
        assert connection.exec_driver_sql("SELECT expires_at FROM batch_files").scalars().all() == [None]
        indexes = {index["name"] for index in sa.inspect(connection).get_indexes("batch_files")}
        assert "ix_batch_files_expires_at" in indexes
        assert {c["name"] for c in sa.inspect(connection).get_columns("batches")} >= {"output_expires_s"}
        connection.exec_driver_sql("UPDATE batch_files SET expires_at = created_at")
    db.downgrade(url, "0020")
    with engine.connect() as connection:
        assert "expires_at" not in {c["name"] for c in sa.inspect(connection).get_columns("batch_files")}
        assert "output_expires_s" not in {c["name"] for c in sa.inspect(connection).get_columns("batches")}
        assert connection.exec_driver_sql("SELECT id FROM batch_files").scalars().all() == ["file-a"]
    engine.dispose()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_0022_adds_key_expiry_and_keeps_keys_both_ways(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A nullable column: keys created before it read NULL (they never expire, as before), and the downgrade
    drops it in place, keeping every key."""
    url = f"sqlite:///{tmp_path / 'k.db'}" if dialect == "sqlite" else request.getfixturevalue("fresh_postgres")
    db.upgrade(url, "0021")
    engine = db.make_sync_engine(url)
    key_row = "INSERT INTO api_keys (id, name, tags, key_hash, created_at, is_admin) VALUES "
    with engine.begin() as connection:
        connection.execute(sa.text(key_row + "('k1', 'old', '{}', 'h1', :at, false)"), {"at": "2026-12-06 12:00:00"})
    db.upgrade(url)
    with engine.begin() as connection:
        assert connection.exec_driver_sql("SELECT expires_at FROM api_keys").scalars().all() == [None]
        connection.exec_driver_sql("UPDATE api_keys SET expires_at = created_at")
    db.downgrade(url, "0021")
    with engine.connect() as connection:
        assert "expires_at" not in {c["name"] for c in sa.inspect(connection).get_columns("api_keys")}
        assert connection.exec_driver_sql("SELECT id FROM api_keys").scalars().all() == ["k1"]
    engine.dispose()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_0023_adds_key_rotation_and_keys_made_before_still_work(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Nullable columns: a key made at 0022 reads as never rotated and its secret still authenticates; it can be
    rotated; the downgrade drops the columns in place, keeping every key (with its current secret)."""
    from datetime import timedelta

    from margin.keycache import KeyCache
    from margin.keyops import rotate_key
    from margin.keys import hash_key, new_key, principal_of

    url = f"sqlite:///{tmp_path / 'r.db'}" if dialect == "sqlite" else request.getfixturevalue("fresh_postgres")
    db.upgrade(url, "0022")
    engine = db.make_sync_engine(url)
    key_id, key = new_key()
    key_row = "INSERT INTO api_keys (id, name, tags, key_hash, created_at, is_admin) VALUES "
    with engine.begin() as connection:
        values = {"id": key_id, "hash": hash_key(key), "at": "2026-12-06 12:00:00"}
        connection.execute(sa.text(key_row + "(:id, 'old', '{}', :hash, :at, false)"), values)
    db.upgrade(url)
    with engine.connect() as connection:
        columns = "SELECT previous_hash, previous_valid_until, rotated_at FROM api_keys"
        assert [tuple(row) for row in connection.exec_driver_sql(columns)] == [(None, None, None)]
        assert schema_diff(connection) == []
    async_engine = db.make_async_engine(url)
    cache = KeyCache(async_engine, ttl_s=0)
    try:
        assert principal_of(await cache.lookup(key)).key_id == key_id  # made before the migration: still works
        _, new = rotate_key(engine, key_id, timedelta(hours=1))
        assert principal_of(await cache.lookup(new)).key_id == key_id
        found = await cache.lookup(key)
        assert found is not None and found.by_previous and principal_of(found).key_id == key_id  # in its grace
    finally:
        await async_engine.dispose()
    db.downgrade(url, "0022")
    with engine.connect() as connection:
        assert "previous_hash" not in {c["name"] for c in sa.inspect(connection).get_columns("api_keys")}
        rows = connection.exec_driver_sql("SELECT id, key_hash FROM api_keys").all()
        assert [tuple(row) for row in rows] == [(key_id, hash_key(new))]
    engine.dispose()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_0024_indexes_the_rows_of_users_for_per_user_budgets(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A per-user counter is rebuilt from one user's rows in its window: the query reads them through the partial
    index (SQLite's plan names it), which holds only the rows that have a user; the schema still equals the
    declared tables, and the downgrade drops the index."""
    from datetime import UTC, datetime, timedelta

    from margin.ledger.read.budget import budget_spent

    url = f"sqlite:///{tmp_path / 'u.db'}" if dialect == "sqlite" else request.getfixturevalue("fresh_postgres")
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = [
        {"request_id": f"r{i}", "kind": "request", "created_at": now - timedelta(minutes=i), "model": "m",
         "backend": "b", "status": "ok", "endpoint": "chat.completions", "user": user, "cost_nanousd": 10 + i,
         "tags": {}, "http_status": 200, "stream": False, "input_tokens": 1, "output_tokens": 1, "cached_tokens": 0,
         "e2e_ms": 1.0, "cost_status": "ok", "config_hash": "h"}
        for i, user in enumerate(["u_a", "u_b", None, "u_a", None])
    ]  # fmt: skip
    with engine.begin() as connection:
        connection.execute(sa.insert(ledger), rows)
    with engine.connect() as connection:
        assert schema_diff(connection) == []
        if dialect == "sqlite":
            index_sql = "SELECT sql FROM sqlite_master WHERE name = 'ix_ledger_user_created'"
        else:
            index_sql = "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_ledger_user_created'"
        definition = connection.exec_driver_sql(index_sql).scalar_one().lower()
        assert "where" in definition and "is not null" in definition  # partial: only the rows with a user
        start = now - timedelta(hours=1)
        assert budget_spent(connection, "user", "u_a", True, start, now + timedelta(seconds=1)) == 10 + 13
        if dialect == "sqlite":
            query = sa.select(sa.func.sum(ledger.c.cost_nanousd)).where(
                *Window(start, now).where(kinds=("request",)), ledger.c.user == "u_a"
            )
            compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()
            assert "ix_ledger_user_created" in " ".join(str(row) for row in plan)
    db.downgrade(url, "0023")
    with engine.connect() as connection:
        assert connection.exec_driver_sql(index_sql).first() is None
    engine.dispose()
