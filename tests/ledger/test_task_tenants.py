"""A task is one tenant's: another team's (or org's, or team-less key's) requests and feedback with an equal
`task_id` tag are another task, through the rollups (ledger_tasks, ledger_task_daily), through ledger rows
(`Window(rollup=False)`) and in the task each outcome is linked to, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from margin.ledger import ingest, read, rollup
from margin.ledger.feedback import Outcome, record
from margin.ledger.models import feedback, ledger_task_daily, ledger_tasks
from margin.ledger.read import Window
from tests.ledger import tenants
from tests.ledger.rows import row


@pytest.fixture
def empty(both_ledgers: sa.Engine) -> sa.Engine:
    return both_ledgers


@pytest.fixture
def engine(empty: sa.Engine) -> sa.Engine:
    tenants.fill(empty)
    return empty


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


def test_no_two_tenants_identities_read_alike(empty: sa.Engine) -> None:
    """Org and team are length-prefixed and a NULL is '-': names that run together, a NULL and a name like
    '-', a key without a team and a team named like it, are each their own tenant; the longest names fit."""
    tenancies = {  # (org, team, key) → the task T's identity
        ("a/b", "c", "k1"): "t:3:a/b/1:c/T",
        ("a", "b/c", "k1"): "t:1:a/3:b/c/T",
        (None, "x", "k1"): "t:-/1:x/T",
        ("-", "x", "k1"): "t:1:-/1:x/T",
        (None, None, "k1"): "t:-/k2:k1/T",
        (None, "k2:k1", "k1"): "t:-/5:k2:k1/T",
        (None, None, None): "t:-/k-/T",
        ("o" * 128, "t" * 128, "k1"): f"t:128:{'o' * 128}/128:{'t' * 128}/T",
    }
    rows = [
        row(f"r{n}", org=org, team=team, key_id=key, tags={"task_id": "T"})
        for n, (org, team, key) in enumerate(tenancies)
    ]
    rows.append(row("long", org="o" * 128, team="t" * 128, key_id="k1", tags={"task_id": "x" * 128}))
    with empty.begin() as connection:
        ingest.ingest_batch(connection, rows)
    record(empty, [Outcome("long", True, None, None)], None, admin=True)
    with empty.connect() as connection:
        anchored = set(connection.execute(sa.select(ledger_tasks.c.task)).scalars())
        [linked] = connection.execute(sa.select(feedback.c.task)).scalars()
    assert anchored == {*tenancies.values(), linked} and len(linked) == 2 + 2 * 132 + 2 + 128
