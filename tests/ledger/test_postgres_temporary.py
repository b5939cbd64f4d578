"""PostgreSQL: the ingest's temporary tables (staging and the rollups' own), kept by a long-lived connection,
do not grow batch after batch. A deleted row keeps its space until a VACUUM, and autovacuum never visits
temporary tables, so they are emptied at commit (ON COMMIT DELETE ROWS truncates them in place)."""

from __future__ import annotations

import sqlalchemy as sa

from margin.ledger import db, ingest
from tests.ledger.varied import batches, varied_rows

TEMPORARY = (
    "SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c "
    "WHERE c.relnamespace = pg_my_temp_schema() AND c.relkind = 'r'"
)


def test_temporary_tables_hold_no_pages_between_batches(fresh_postgres: str) -> None:
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
    assert ingest.STAGING in sizes and "ledger_rollup_rows2" in sizes and len(sizes) == 9
    assert sizes == dict.fromkeys(sizes, 0)
