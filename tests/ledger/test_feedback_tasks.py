"""Feedback is linked to its request's task when posted (and by `link_tasks` for rows written otherwise): a
`task_id` tag's task (its tenant's: tests.ledger.test_task_tenants), else the request's own; a row of another
kind with the same request id never wins."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from margin.ledger import db, ingest
from margin.ledger.feedback import Outcome, link_tasks, record
from margin.ledger.models import feedback
from tests.ledger.rows import row

ROWS = [
    row("a", tags={"task_id": "T1"}, key_id="k1"),
    row("b", key_id="k1"),
    row("b", kind="refund", key_id="k1"),  # same request id, not traffic
    row("c", kind="refund", key_id="k1"),  # only a refund: no task
]


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    found = f"sqlite:///{tmp_path / 'f.db'}" if request.param == "sqlite" else request.getfixturevalue("fresh_postgres")
    db.upgrade(found)
    return str(found)


def tasks_of(engine: sa.Engine) -> dict[str, str | None]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(feedback.c.request_id, feedback.c.task)).all()
    return {r.request_id: r.task for r in rows}


def test_feedback_is_linked_to_its_requests_task(url: str) -> None:
    engine = db.make_sync_engine(url)
    try:
        with engine.begin() as connection:
            ingest.ingest_batch(connection, ROWS)
        outcomes = [Outcome(rid, True, None, None) for rid in ("a", "b", "c")]
        record(engine, outcomes, "k1", admin=False)
        expected = {"a": "t:-/k2:k1/T1", "b": "r:b", "c": None}  # T1 of no org's key k1 (which has no team)
        assert tasks_of(engine) == expected
        with engine.begin() as connection:  # as a bulk load leaves them: unlinked, then linked
            connection.execute(sa.update(feedback).values(task=None))
            assert link_tasks(connection) == 3
        assert tasks_of(engine) == expected
    finally:
        engine.dispose()
