"""Several tenants tag requests with one `task_id`: a ledger where each tenant's task must stay its own.

alpha (org acme) and bravo (org acme) are two teams of one org, globex's bravo a team of another org with the
same name, and two keys of acme without a team (each sees its own rows only). All of them send task T after
alpha did (on a shared task alpha's table would add up their cost, and the $999 of value bravo posts with its
outcome); bravo sends task U before alpha does (on a shared task it would take alpha's anchor, and its team).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from margin.ledger import ingest
from margin.ledger.feedback import Outcome, record
from margin.ledger.read import TaskSums, Window
from tests.ledger.rows import row

MIDNIGHT = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
START = MIDNIGHT - timedelta(days=3) + timedelta(hours=10)
NANO = 1_000_000_000
TENANTS = {  # key → (org, team)
    "ka": ("acme", "alpha"),
    "kb": ("acme", "bravo"),
    "kc": ("globex", "bravo"),
    "kd1": ("acme", None),
    "kd2": ("acme", None),
}


def _row(request_id: str, key: str, hours: int, cost: int, task: str | None = "T") -> dict[str, Any]:
    org, team = TENANTS[key]
    tags = {"task_id": task, "feature": f"f-{key}"} if task else {"feature": f"f-{key}"}
    at = START + timedelta(hours=hours)
    return row(request_id, key_id=key, org=org, team=team, tags=tags, created_at=at, cost_nanousd=cost)


ROWS = [
    _row("b0", "kb", -1, 4_000, task="U"),  # before alpha's U
    _row("a1", "ka", 0, 100),
    _row("a2", "ka", 1, 200),
    _row("b1", "kb", 2, 8_000),
    _row("c1", "kc", 3, 16_000),
    _row("d1", "kd1", 4, 32_000),
    _row("d2", "kd2", 5, 64_000),
    _row("a3", "ka", 6, 1, task=None),  # a task of its own
    _row("a4", "ka", 7, 400, task="U"),
]
OUTCOMES = {  # key → what it posts about its own request
    "ka": Outcome("a1", True, None, 1 * NANO),
    "kb": Outcome("b1", False, None, 999 * NANO),
    "kc": Outcome("c1", True, None, None),
    "kd2": Outcome("d2", True, 0.5, None),
}
# each request's stored task: t:<org>/<team>/<task_id>, org and team as <length>:<value>, '-' for NULL and
# k<key> for a key without a team
TASKS = {
    "a1": "t:4:acme/5:alpha/T",
    "b1": "t:4:acme/5:bravo/T",
    "c1": "t:6:globex/5:bravo/T",
    "d2": "t:4:acme/k3:kd2/T",
}

ALPHA = TaskSums(3, 1, 1, 701, 300, 0, 0.0, 0, 1 * NANO)  # T (a1, a2), U (a4), a3: nobody else's cost or value
BRAVO_ACME = TaskSums(2, 1, 0, 12_000, 8_000, 0, 0.0, 0, 999 * NANO)  # T (b1), U (b0)
BRAVO_GLOBEX = TaskSums(1, 1, 1, 16_000, 16_000, 0, 0.0, 0, None)
BRAVO = TaskSums(3, 2, 1, 28_000, 24_000, 0, 0.0, 0, 999 * NANO)  # two orgs' teams named bravo, by team name
NO_TEAM = TaskSums(2, 1, 1, 96_000, 64_000, 0, 0.5, 1, None)  # one task per key without a team
BY_KEY = {"ka": 3, "kb": 2, "kc": 1, "kd1": 1, "kd2": 1}  # tasks per anchor key


def fill(engine: sa.Engine) -> None:
    """The rows, ingested in two batches (bravo's U last: on a shared task it would move alpha's anchor), and
    each key's outcome, posted by that key."""
    with engine.begin() as connection:
        ingest.ingest_batch(connection, ROWS[1:])
    with engine.begin() as connection:
        ingest.ingest_batch(connection, ROWS[:1])
    for key, outcome in OUTCOMES.items():
        record(engine, [outcome], key, admin=False)


def windows() -> list[Window]:
    """Open, and with whole days (ledger_task_daily) between partial ones (ledger_tasks)."""
    return [Window(), Window(MIDNIGHT - timedelta(days=5, hours=7), MIDNIGHT + timedelta(hours=5))]


def rows_path(window: Window) -> Window:
    return Window(window.since, window.until, window.team, window.key_id, rollup=False, org=window.org)
