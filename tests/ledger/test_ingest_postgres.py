"""Ingest on PostgreSQL: the temporary tables a long-lived connection keeps do not grow, and a rebuild of the
rollups takes turns with an ingest in progress."""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa

from margin.ledger import db, ingest, rollup
from tests.ledger.varied import assert_equals_a_rebuild, batches, varied_rows

TEMPORARY = (
    "SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c "
    "WHERE c.relnamespace = pg_my_temp_schema() AND c.relkind = 'r'"
)


def test_temporary_tables_hold_no_pages_between_batches(fresh_postgres: str) -> None:
    """The staging and rollup tables are kept per connection. A deleted row keeps its space until a VACUUM,
    and autovacuum never visits temporary tables, so they are emptied at commit (ON COMMIT DELETE ROWS
    truncates them in place)."""
    db.upgrade(fresh_postgres)
    engine = db.make_sync_engine(fresh_postgres)
    parts = list(batches(varied_rows(900)))
    inserted = 0
    with engine.connect() as connection:  # one connection throughout, as the ingester's
        for part in parts:
            with connection.begin():
                inserted += ingest.ingest_batch(connection, part)
        sizes = {str(name): int(size) for name, size in connection.exec_driver_sql(TEMPORARY)}
        ledger_rows = connection.execute(sa.text("SELECT count(*) FROM ledger")).scalar_one()
    engine.dispose()
    assert len(parts) > 3 and inserted == ledger_rows > 0
    assert ingest.STAGING in sizes and "ledger_rollup_rows2" in sizes and len(sizes) == 10 + 2  # + one per tag key
    assert sizes == dict.fromkeys(sizes, 0)


def test_a_rebuild_takes_turns_with_an_ingest_in_progress(fresh_postgres: str) -> None:
    """`margin db rebuild-rollups` while a gateway ingests: the rebuild's DELETE does not see the group rows
    an uncommitted ingest adds, and its upserts would then add the whole ledger on top of them (counted
    twice). It waits for the ingests' lock instead, and the rollups still equal a rebuild afterwards."""
    db.upgrade(fresh_postgres)
    engine = db.make_sync_engine(fresh_postgres)
    first, second = batches(varied_rows(300))[:2]
    with engine.begin() as connection:
        ingest.ingest_batch(connection, first)
    rebuilt = threading.Event()

    def rebuild() -> None:
        with engine.begin() as connection:
            rollup.rebuild(connection)
        rebuilt.set()

    worker = threading.Thread(target=rebuild)
    with engine.connect() as ingesting, ingesting.begin():
        ingest.ingest_batch(ingesting, second)  # new groups, not committed yet
        worker.start()
        assert not rebuilt.wait(1.0)  # the rebuild waits for this transaction
    worker.join(60)
    assert rebuilt.is_set()
    assert_equals_a_rebuild(engine)
    engine.dispose()


def test_the_largest_token_counts_an_upstream_can_report_ingest_in_one_batch(fresh_postgres: str) -> None:
    """An upstream that reports 2^31-1 tokens: the count is clamped where it is read (`Usage.from_openai`) so
    that SQL's `input_tokens + output_tokens` fits PostgreSQL's `integer`. Before, the whole batch failed with
    "integer out of range" and was re-moved row by row (26 ms a row), for every tenant."""
    from margin.types import MAX_TOKENS, Usage

    usage = Usage.from_openai({"prompt_tokens": 2**31 - 1, "completion_tokens": 10**12})
    assert usage is not None and usage.input_tokens == usage.output_tokens == MAX_TOKENS
    db.upgrade(fresh_postgres)
    engine = db.make_sync_engine(fresh_postgres)
    rows = varied_rows(50)
    rows[7].update(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, cost_nanousd=1)
    with engine.begin() as connection:
        assert ingest.ingest_batch(connection, rows) == 50
        total = connection.execute(sa.text("SELECT max(input_tokens + output_tokens) FROM ledger")).scalar_one()
    engine.dispose()
    assert total == 2 * MAX_TOKENS


def test_one_request_id_of_two_kinds_in_one_batch_on_postgres(fresh_postgres: str) -> None:
    """A request id that comes as a request and a cache hit in one batch is one task 'r:x' of two requests.
    Were they two rows of the batch's tasks, PostgreSQL would refuse the upsert that touches one row twice
    ("ON CONFLICT DO UPDATE command cannot affect row a second time"), where SQLite adds them up."""
    from tests.report.ledgers import MILLI, at, complete, row

    def of(request_id: str, kind: str, hour: int) -> dict[str, Any]:
        return complete(row(request_id, kind=kind, created_at=at(6, hour), tags={}, cost_nanousd=MILLI))

    db.upgrade(fresh_postgres)
    engine = db.make_sync_engine(fresh_postgres)
    with engine.begin() as connection:
        assert ingest.ingest_batch(connection, [of("x", "request", 9), of("x", "cache_hit", 8)]) == 2
        found = connection.exec_driver_sql("SELECT task, requests, cost_nanousd FROM ledger_tasks ORDER BY task")
        assert [tuple(r) for r in found] == [("r:x", 2, 2 * MILLI)]
    assert_equals_a_rebuild(engine)
    engine.dispose()
