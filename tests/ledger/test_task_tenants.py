"""A task is one tenant's: another team's (or org's, or team-less key's) requests and feedback with an equal
`task_id` tag are another task, through the rollups (ledger_tasks, ledger_task_daily), through ledger rows
(`Window(rollup=False)`) and in the task each outcome is linked to, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from margin.ledger import db, read, rollup
from margin.ledger.models import feedback, ledger_task_daily, ledger_tasks
from margin.ledger.read import Window
from tests.ledger import tenants


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path / 't.db'}" if request.param == "sqlite" else request.getfixturevalue("fresh_postgres")
    db.upgrade(url)
    found = db.make_sync_engine(url)
    tenants.fill(found)
    yield found
    found.dispose()


def both_paths(connection: sa.Connection, window: Window, by: str | None = None) -> dict[object, read.TaskSums]:
    """The task table of the window from the rollups, asserted equal to the one from ledger rows."""
    rolled = read.task_sums(connection, window, by)
    assert rolled == read.task_sums(connection, tenants.rows_path(window), by), (window, by)
    return rolled


def test_a_teams_tasks_hold_none_of_another_tenants_requests_or_feedback(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        for window in tenants.windows():
            alpha = Window(window.since, window.until, team="alpha")
            assert both_paths(connection, alpha) == {None: tenants.ALPHA}
            assert both_paths(connection, window, "team") == {
                "alpha": tenants.ALPHA,
                "bravo": tenants.BRAVO,
                None: tenants.NO_TEAM,
            }
            by_key = both_paths(connection, window, "key")
            assert {key: sums.tasks for key, sums in by_key.items()} == tenants.BY_KEY
            for org, expected in (("acme", tenants.BRAVO_ACME), ("globex", tenants.BRAVO_GLOBEX)):
                one_org = Window(window.since, window.until, team="bravo", org=(org,))
                assert both_paths(connection, one_org) == {None: expected}
            for key in ("ka", "kd1", "kd2"):  # one key's view was right before, and stays so
                expected = tenants.ALPHA if key == "ka" else by_key[key]
                assert both_paths(connection, Window(window.since, window.until, key_id=key)) == {None: expected}


def test_each_outcome_is_linked_to_its_own_tenants_task(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        linked = dict(connection.execute(sa.select(feedback.c.request_id, feedback.c.task)).all())
        anchored = set(connection.execute(sa.select(ledger_tasks.c.task)).scalars())
    assert linked == tenants.TASKS
    assert set(tenants.TASKS.values()) <= anchored and "t:T" not in anchored


def test_the_task_rollups_equal_a_rebuild(engine: sa.Engine) -> None:
    """Batch by batch (an anchor moved by a later batch) equals a rebuild from the ledger."""

    def tables() -> dict[str, list[tuple[object, ...]]]:
        with engine.connect() as connection:
            tasks = connection.execute(sa.select(ledger_tasks))
            daily = connection.execute(sa.select(ledger_task_daily).where(ledger_task_daily.c.tasks != 0))
            return {"tasks": sorted(map(tuple, tasks), key=str), "daily": sorted(map(tuple, daily), key=str)}

    before = tables()
    with engine.begin() as connection:
        rollup.rebuild(connection)
    assert tables() == before and len(before["tasks"]) == 8
