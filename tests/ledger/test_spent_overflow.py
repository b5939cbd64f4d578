"""A per-user or per-tag budget's spend over rows whose costs add past 2^63 nano-USD (a hostile upstream's 2^30
tokens at the dearest prices a config takes, five rows) is held at SPENT_CAP, far over any budget, on both
databases: the budget refuses as spent (429 `budget_exceeded`). Before, SQLite's SUM raised `integer overflow` and
the budget answered 503 until its window ended, while PostgreSQL's (a numeric) read past 2^63. Sums that fit are
exact, as before."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from margin.ledger import db, ingest
from margin.ledger.models import ledger
from margin.ledger.read.budget import SPENT_CAP, budget_spent
from tests.governance.conftest import bearer, make_key
from tests.helpers import margin_serve, polls
from tests.report.ledgers import complete, row

HOSTILE = 2 * (2**30 - 1) * 10**9  # input and output of 2^30 - 1 tokens at $1 a token (MAX_USD_PER_MTOK)
TAGS = {"customer": "acme"}
BUDGET = {"name": "acme", "scope": {"kind": "tag", "value": "customer=acme"}, "usd": 100, "period": "day"}


def _config(url: str, budget: dict[str, Any], redis_url: str | None = None) -> dict[str, Any]:
    storage = {"ledger": url, "flush_interval_ms": 50} | ({"redis": redis_url} if redis_url else {})
    return {
        "storage": storage,
        "backends": {"f": {"kind": "fake"}},
        "models": {"m": {"backend": "f", "price": {"input": "1", "output": "1"}}},
        "budgets": [budget],
    }


def _rows(costs: list[int], user: str) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
        complete(
            row(
                f"{user}-{i}",
                key_id=None,
                user=user,
                tags=TAGS,
                created_at=now,
                cost_nanousd=cost,
                input_tokens=1,
                output_tokens=2,
            )
        )
        for i, cost in enumerate(costs)
    ]


def _insert(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    """The rows alone (a test of the read over ledger rows; the rollups are not read by these budgets)."""
    with engine.begin() as connection:
        connection.execute(ledger.insert(), rows)


@pytest.fixture
def engine(both_ledgers: sa.Engine) -> sa.Engine:
    return both_ledgers


def test_a_spend_past_64_bits_reads_as_the_cap_and_one_within_is_exact(engine: sa.Engine) -> None:
    exact = [2**62 + 12_345, 2**40 + 7, 3]  # their sum fits; each has high and low bits
    _insert(engine, _rows([HOSTILE] * 5, "hostile") + _rows(exact, "honest"))
    with engine.connect() as connection:
        for kind, value in (("user", "hostile"), ("tag", "customer=acme")):
            assert budget_spent(connection, kind, value, True, None, None) == SPENT_CAP  # SQLite: integer overflow
        assert budget_spent(connection, "user", "honest", True, None, None) == sum(exact)
        assert budget_spent(connection, "user", "hostile", False, None, None) == 5 * 3  # tokens: one SUM, exact


def test_a_budget_read_from_rows_over_such_rows_reads_as_the_cap(engine: sa.Engine) -> None:
    """A scope that names an org (or a part of the window the rollups do not hold) is summed from the rows."""
    _insert(engine, [{**item, "org": "o", "model": "m"} for item in _rows([HOSTILE] * 5, "hostile")])
    with engine.connect() as connection:
        for kind, value in (("global", None), ("model", "m")):
            assert budget_spent(connection, kind, value, True, None, None, ("o",)) == SPENT_CAP  # SQLite: 503 before
            assert budget_spent(connection, kind, value, False, None, None, ("o",)) == 5 * 3


def test_a_team_budget_over_such_rows_reads_as_the_cap(tmp_path: Path) -> None:
    """SQLite's rollups hold such a sum as a float (margin.ledger.batch); the spend read from them was past 2^63."""
    url = f"sqlite:///{tmp_path / 't.db'}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    for item in _rows([HOSTILE] * 5, "hostile"):  # a batch each: the rows as the ingester moves them one by one
        with engine.begin() as connection:
            ingest.ingest_batch(connection, [{**item, "team": "t"}])
    with engine.connect() as connection:
        assert budget_spent(connection, "team", "t", True, None, None) == SPENT_CAP
        assert budget_spent(connection, "global", None, True, None, None) == SPENT_CAP
    engine.dispose()


def test_a_tag_budget_over_such_rows_refuses_as_spent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    _insert(engine, _rows([HOSTILE] * 5, "hostile"))
    engine.dispose()
    path = tmp_path / "margin.yaml"
    path.write_text(yaml.safe_dump(_config(url, BUDGET)))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with margin_serve(None, tmp_path / "serve.log", path) as (base, _):
        answers = [
            httpx.post(f"{base}/v1/chat/completions", json=body, headers={"x-margin-tags": tags}, timeout=30)
            for tags in ("customer=acme", "customer=globex")
        ]
    refused, other = answers
    assert refused.status_code == 429, refused.text  # before: 503 governance_unavailable
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert other.status_code == 200  # another customer's spend is its own


@pytest.mark.parametrize("shared", [False, True], ids=["local", "redis"])
def test_a_soft_budget_at_the_cap_goes_on_warning(tmp_path: Path, shared: bool, request: pytest.FixtureRequest) -> None:
    """A soft budget seeded at SPENT_CAP (such rows) is settled into for real, in the default store and Redis: its
    counter stays at the cap, every request is answered with the warning and settled. Before, Redis refused the
    settle (HINCRBY: "increment or decrement would overflow"): the reservation stayed open for the reaper, which
    failed on it at every pass; the in-process counter read past what a counter holds."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    _, key = make_key(tmp_path / "ledger.db", name="acme", tags=TAGS)  # a key bound to the tag: its budget applies
    engine = db.make_sync_engine(url)
    _insert(engine, _rows([HOSTILE] * 5, "hostile"))
    engine.dispose()
    redis_url = request.getfixturevalue("redis_url") if shared else None
    path = tmp_path / "margin.yaml"
    path.write_text(yaml.safe_dump(_config(url, {**BUDGET, "mode": "soft"}, redis_url)))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    auth = bearer(key)
    with margin_serve(None, tmp_path / "serve.log", path) as (base, _):
        for _ in range(3):
            answer = httpx.post(f"{base}/v1/chat/completions", json=body, headers=auth, timeout=30)
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-margin-budget-warning"].startswith("acme=")
        for _ in polls(10):
            budgets = httpx.get(f"{base}/v1/margin/usage", headers=auth, timeout=30).json()["budgets"]
            if budgets[0]["reserved"] == "0":  # settled (with Redis, in a task after the answer)
                break
        assert budgets[0]["spent"] == str(Decimal(SPENT_CAP).scaleb(-9)), budgets  # before: past it (local)
    assert "overflow" not in (tmp_path / "serve.log").read_text()  # before: every settle and reaper pass (Redis)
