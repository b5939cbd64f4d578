"""ingest_batch and the per-batch rollups: replays count once, incremental rollups equal a rebuild, a task's
anchor follows its earliest request, and every read gives the same answer from the rollups and from rows
(budget scopes, team views)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from margin.governance.rules import Subject, governed_tags, matches
from margin.ledger import db, ingest, read, rollup
from margin.ledger.models import api_keys
from margin.report.business import margins, tasks
from margin.report.queries import summarize
from margin.report.utilization import utilization
from margin.specs import Scope
from tests.helpers import fake_settings
from tests.ledger.varied import assert_equals_a_rebuild, batches, snapshot, varied_rows
from tests.report.ledgers import MILLI, ROWS, at, complete, load, row, tags


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path / 'i.db'}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    yield engine
    engine.dispose()


def empty(connection: sa.Connection, tables: list[str]) -> bool:
    return all(connection.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar() == 0 for t in tables)


def test_replays_count_once_and_incremental_equals_rebuild(engine: sa.Engine) -> None:
    rows = [complete(r) for r in ROWS]
    with engine.begin() as connection:
        assert ingest.ingest_batch(connection, [rows[0], rows[1], rows[0]]) == 2  # a duplicate inside the batch
        assert ingest.ingest_batch(connection, rows) == len(rows) - 2  # two already in the ledger
        assert ingest.ingest_batch(connection, rows) == 0  # a replay of everything: a no-op
    incremental = snapshot(engine)
    with engine.begin() as connection:
        sizes = rollup.rebuild(connection)
    assert snapshot(engine) == incremental
    assert (sizes["ledger_tasks"], sizes["ledger_hourly"]) == (5, 7)  # t1, t2, t3, r5, r6; 7 distinct hours
    with engine.connect() as connection:
        assert read.totals(connection, read.Window())["requests"] == len(ROWS)


def test_task_anchor_moves_to_its_earliest_request(engine: sa.Engine) -> None:
    """Two keys of one team send task T (another team's T would be another task: test_task_tenants)."""
    late = row("b", created_at=at(5, 9), key_id="k-late", tags=tags("chat", "globex", "T"), cost_nanousd=2 * MILLI)
    early = row("a", created_at=at(5, 8), key_id="k-early", tags=tags("search", "acme", "T"), cost_nanousd=MILLI)
    with engine.begin() as connection:
        ingest.ingest_batch(connection, [complete(late)])
        ingest.ingest_batch(connection, [complete(early)])  # arrives later, happened earlier
        task = connection.exec_driver_sql("SELECT key_id, feature, customer, requests, cost_nanousd FROM ledger_tasks")
        assert tuple(task.one()) == ("k-early", "search", "acme", 2, 3 * MILLI)
    for by in (None, "team", "key", "feature", "customer"):
        with engine.connect() as connection:
            fast = read.task_sums(connection, read.Window(), by)
            slow = read.task_sums(connection, read.Window(rollup=False), by)
        assert fast == slow, by
    assert {t.key for t in tasks(engine, read.Window(), "key")} == {"k-early"}


def test_one_request_id_of_two_kinds_is_one_task(engine: sa.Engine) -> None:
    """A request that is its own task ('r:' + its id) is rolled up without a sort; a request id that comes
    both as a request and a cache hit, in one batch or in two, is still one task of two requests."""

    def of(request_id: str, kind: str, hour: int) -> dict[str, Any]:
        return complete(row(request_id, kind=kind, created_at=at(6, hour), tags={}, cost_nanousd=MILLI))

    with engine.begin() as connection:
        assert ingest.ingest_batch(connection, [of("x", "request", 9), of("x", "cache_hit", 8), of("y", "request", 9)])
        assert ingest.ingest_batch(connection, [of("y", "cache_hit", 7), of("y", "cache_hit", 7)]) == 1
        found = connection.exec_driver_sql("SELECT task, requests, cost_nanousd FROM ledger_tasks ORDER BY task")
        assert [tuple(r) for r in found] == [("r:x", 2, 2 * MILLI), ("r:y", 2, 2 * MILLI)]
    assert_equals_a_rebuild(engine)
    with engine.connect() as connection:
        assert read.task_sums(connection, read.Window(), None) == read.task_sums(
            connection, read.Window(rollup=False), None
        )


SCOPES = [("global", None), ("team", "search-team"), ("model", "priced"), ("backend", "fake"), ("key", "k1"),
          ("org", "nobody"), ("tag", "feature=search"), ("tag", "customer=acme"), ("tag", "task_id=t1")]  # fmt: skip


BOUND = {"k1": {"feature": "*"}}  # k1 may fill `feature` from its header; its other tags only label rows


def _governed(r: dict[str, Any]) -> Subject:
    """The subject admission saw: tags bound to the row's key only (governance.rules.governed_tags)."""
    tags = governed_tags(r["tags"] or {}, BOUND.get(r["key_id"], {}), r["key_id"] is not None)
    return Subject(r["key_id"], r["team"], None, tags, r["model"], r["backend"])


@pytest.mark.parametrize(("kind", "value"), SCOPES)
def test_budget_spent_is_governance_matching_on_every_path(engine: sa.Engine, kind: str, value: str | None) -> None:
    load(engine)
    keys = [{"id": k, "name": k, "key_hash": k, "tags": t, "created_at": at(1)} for k, t in BOUND.items()]
    with engine.begin() as connection:
        connection.execute(api_keys.insert(), keys)
    scope = Scope(kind=kind, value=value)
    requests = [r for r in ROWS if r["kind"] == "request"]
    expected_usd = sum(r["cost_nanousd"] or 0 for r in requests if matches(scope, _governed(r)))
    match = None if kind in ("global", "tag") else (kind, str(value))
    with engine.connect() as connection:
        for window in (read.Window(at(1), at(16)), read.Window(at(2, 0, 45), at(3, 3, 30)), read.Window()):
            fast = read.budget_spent(connection, kind, value, True, window.since, window.until)
            rows_only = read.Window(window.since, window.until, rollup=False)
            if kind != "tag":  # tag budgets read rows whatever the window (the bound-tag rule)
                assert fast == read.totals(connection, rows_only, ("request",), match)["cost_nanousd"], window
        assert read.budget_spent(connection, kind, value, True, at(1), at(16)) == expected_usd
        tokens = read.budget_spent(connection, kind, value, False, None, None)
    assert tokens == sum(r["input_tokens"] + r["output_tokens"] for r in requests if matches(scope, _governed(r)))


def _key(key_id: str, team: str, org: str | None) -> dict[str, Any]:
    return {"id": key_id, "name": key_id, "key_hash": key_id, "team": team, "org": org, "tags": {}, "created_at": at(1)}


def test_budget_spent_of_one_org(engine: sa.Engine) -> None:
    """A per-org counter adds up that org's rows only; (None,) is the rows of keys in no org."""
    with engine.begin() as connection:
        connection.execute(
            api_keys.insert(),
            [_key("ka", "support", "acme"), _key("kb", "support", "globex"), _key("kc", "support", None)],
        )
        ingest.ingest_batch(connection, [complete(row("a", org="acme", team="support", cost_nanousd=MILLI))])
        ingest.ingest_batch(connection, [complete(row("b", org="globex", team="support", cost_nanousd=2 * MILLI))])
        ingest.ingest_batch(connection, [complete(row("c", team="support", cost_nanousd=4 * MILLI))])
    with engine.connect() as connection:
        spent = {org: read.budget_spent(connection, "team", "support", True, None, None, org) for org in
                 (("acme",), ("globex",), (None,), None)}  # fmt: skip
    assert spent == {("acme",): MILLI, ("globex",): 2 * MILLI, (None,): 4 * MILLI, None: 7 * MILLI}


def test_a_team_is_narrowed_to_its_org_only_when_another_org_has_that_team(engine: sa.Engine) -> None:
    """The rollups have no org column (but the hourly one): a team view keeps its org narrowing (rows) only when
    a key of another org has a team of that name; else the team filter alone is exact and the rollups answer."""
    with engine.begin() as connection:
        connection.execute(api_keys.insert(), [_key("k1", "support", "acme"), _key("k2", "sales", None)])
        ingest.ingest_batch(connection, [complete(row("a", org="acme", team="support", cost_nanousd=MILLI))])
    with engine.connect() as connection:
        assert read.team_org(connection, "support", ("acme",)) is None
        assert read.team_org(connection, "sales", (None,)) is None
        assert read.budget_spent(connection, "team", "support", True, None, None, ("acme",)) == MILLI
    with engine.begin() as connection:
        connection.execute(api_keys.insert(), [_key("k3", "support", None), _key("k4", "sales", "globex")])
    with engine.connect() as connection:
        assert read.team_org(connection, "support", ("acme",)) == ("acme",)
        assert read.team_org(connection, "support", (None,)) == (None,)
        assert read.team_org(connection, "sales", (None,)) == (None,)
        assert read.team_org(connection, "sales", ("globex",)) == ("globex",)


def test_team_views_equal_on_both_paths(engine: sa.Engine, tmp_path: Path) -> None:
    other = row("o1", team="ads", tags=tags("search", "initech", "t9"), cost_nanousd=7 * MILLI, created_at=at(2, 3),
                backend="fake", busy_ms=500.0)  # fmt: skip
    load(engine, rows=[*ROWS, other])
    settings = fake_settings(tmp_path / "x.db", revenue={"features": {"search": {"price_per_call": "0.002"}}})
    for team in ("search-team", "ads"):
        fast, slow = read.Window(at(1), at(16), team=team), read.Window(at(1), at(16), team=team, rollup=False)
        assert summarize(engine, fast, "feature") == summarize(engine, slow, "feature")
        assert [t.to_json() for t in tasks(engine, fast, "feature")] == [
            t.to_json() for t in tasks(engine, slow, "feature")
        ]
        assert margins(engine, fast, settings.revenue).to_json() == margins(engine, slow, settings.revenue).to_json()
        assert utilization(engine, fast, settings) == utilization(engine, slow, settings)
    ads = summarize(engine, read.Window(at(1), at(16), team="ads"))["totals"]
    assert (ads["requests"], ads["cost_usd"]) == (1, "0.007000000")  # its own rows only
    [hosted] = utilization(engine, read.Window(at(2), at(3), team="ads"), settings)
    assert hosted.busy_s == 0.5 and hosted.idle_cost_usd is None  # idle time is shared: not the team's
    [report] = [margins(engine, read.Window(at(1), at(16), team="ads"), settings.revenue)]
    assert report.to_json()["team"] == "ads" and report.rows[0].revenue_usd is not None


def test_days_then_hours_then_rows_equal_rows(engine: sa.Engine) -> None:
    load(engine)
    since, until = at(1, 22, 15), at(3, 3, 30)
    parts = read.plan_days_then_hours(read.Window(since, until))
    assert [p.source for p in parts] == ["rows", "hour", "day", "hour", "rows"]
    assert (parts[2].since, parts[2].until) == (at(2), at(3))
    with engine.connect() as connection:
        for by in (None, "team", "model", "backend", "region", "org", "kind", "day", "hour", "feature"):
            for match in (None, ("team", "search-team"), ("model", "priced")):
                fast = read.grouped(connection, read.Window(since, until), by, match=match)
                slow = read.grouped(connection, read.Window(since, until, rollup=False), by, match=match)
                assert fast == slow, (by, match)
        assert read.totals(connection, read.Window(since, until))["requests"] == 6  # r1-r6; r7 is at 04:00


def test_rollups_of_uneven_batches_equal_a_rebuild_on_varied_rows(engine: sa.Engine) -> None:
    """NULL/'' dimensions, numeric tags, tasks spread over batches arriving out of order, identical instants,
    refunds, unpriced rows, three rolled-up tag keys: batch by batch gives the rebuild's integers."""
    with engine.begin() as connection:
        rollup.rebuild(connection, ("feature", "customer", "task_id"))
    for part in batches(varied_rows(1500)):
        with engine.begin() as connection:
            ingest.ingest_batch(connection, part)
    assert_equals_a_rebuild(engine)
    with engine.connect() as connection:
        assert rollup.sizes(connection)["ledger_tasks"] > 100
        found = connection.exec_driver_sql("SELECT name FROM sqlite_temp_master WHERE name LIKE 'ledger_rollup%'")
        tables = [name for (name,) in found]  # kept for the connection's next batch, and empty
        assert len(tables) == 9 + 3 and "ledger_rollup_rows3" in tables  # + one pre-aggregate per tag key
        assert {"ledger_rollup_tag0", "ledger_rollup_tag1", "ledger_rollup_tag2"} <= set(tables)
        assert empty(connection, tables)


def test_kept_temporary_tables_follow_a_change_of_keys_and_a_failed_batch(engine: sa.Engine) -> None:
    """One connection ingests throughout (its rollups' temporary tables are kept between batches) while
    another changes the rolled-up tag keys (`margin db rebuild-rollups`), and one batch fails half-way
    through its rollup: every rollup still equals a rebuild, and the failed batch left nothing behind."""
    parts = list(batches(varied_rows(600)))
    failing = {"armed": False}

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _fail_once(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if failing["armed"] and statement.startswith("INSERT INTO ledger_daily"):
            failing["armed"] = False
            raise RuntimeError("the database went away mid-rollup")

    other = db.make_sync_engine(str(engine.url))
    with engine.connect() as connection:
        with connection.begin():
            rollup.rebuild(connection, ("feature",))
        for i, part in enumerate(parts):
            if i == 2:  # from another connection, between two batches of this one
                with other.begin() as elsewhere:
                    rollup.rebuild(elsewhere, ("feature", "customer", "task_id"))
            if i == 3:
                failing["armed"] = True
                with pytest.raises(RuntimeError), connection.begin():
                    ingest.ingest_batch(connection, part)
            with connection.begin():
                assert ingest.ingest_batch(connection, part) == len({(r["request_id"], r["kind"]) for r in part})
        kept = [name for (name,) in connection.exec_driver_sql("SELECT name FROM sqlite_temp_master")]
        assert {"ledger_rollup_rows1", "ledger_rollup_rows3"} <= set(kept)
        assert empty(connection, kept)
    other.dispose()
    assert_equals_a_rebuild(engine)
