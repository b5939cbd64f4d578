"""Issue 13 §3, the ledger cannot be poisoned, attacked through a running `margin serve` on SQLite and on
PostgreSQL: values the ledger cannot hold are refused at parse time (400 naming the field); a row the database
still refuses is set aside in the dead-letter table while every other row is written; a ledger that cannot
keep up answers 503 instead of growing its queue without bound."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
import pytest

from tests.security.conftest import Served, ServeFactory
from tests.security.waiting import wait_for

CHAT = "/v1/chat/completions"
GOOD = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
POISON = "poison-pill"  # a requested model the test's database trigger refuses (as a database refuses a bad row)


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "sqlite" else str(request.getfixturevalue("fresh_postgres"))


def refuse_poison(gw: Served) -> None:
    """A trigger that makes the database refuse one kind of row, the way PostgreSQL refused a 300-character
    `user` before (the batch holding it then failed forever and no row was written again)."""
    if gw.ledger is None:
        with sqlite3.connect(gw.db) as connection:
            connection.execute(
                f"CREATE TRIGGER refuse_poison BEFORE INSERT ON ledger WHEN NEW.requested_model = '{POISON}' "
                "BEGIN SELECT RAISE(ABORT, 'refused: poison row'); END"
            )
        return
    with psycopg.connect(gw.ledger.replace("postgresql+psycopg", "postgresql"), autocommit=True) as connection:
        connection.execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
            f"IF NEW.requested_model = '{POISON}' THEN RAISE EXCEPTION 'refused: poison row'; END IF; "
            "RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        connection.execute(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON ledger FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
        )


@pytest.mark.parametrize(
    ("param", "body"),
    [
        ("user", {**GOOD, "user": "u" * 300}),  # the reproduction: a 300-character user stopped the ledger
        ("model", {**GOOD, "model": "m" * 129}),
        ("user", {**GOOD, "user": "a\x00b"}),
        ("model", {**GOOD, "model": "fake-chat\x00"}),
    ],
    ids=["long-user", "long-model", "nul-user", "nul-model"],
)
def test_values_the_ledger_cannot_hold_are_refused_and_the_ledger_keeps_writing(
    served: ServeFactory, ledger: str | None, param: str, body: dict[str, Any]
) -> None:
    with served(keys={"k": ["--team", "t"]}, ledger=ledger) as gw, gw.client(gw.keys["k"]) as client:
        refused = client.post(CHAT, json=body)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error"
        for _ in range(5):
            assert client.post(CHAT, json=GOOD).status_code == 200
        wait_for(lambda: len(gw.rows()) == 5, "the five good rows")
    rows = gw.rows()  # after shutdown: nothing missing, nothing extra
    assert len(rows) == 5 and {row.http_status for row in rows} == {200}
    assert gw.rows("ledger_dead_letter") == []


def test_a_row_the_database_refuses_is_set_aside_and_the_rest_are_written(
    served: ServeFactory, ledger: str | None
) -> None:
    overrides = {"storage": {"flush_interval_ms": 300}}  # several requests share a batch with the bad row
    with served(overrides, keys={"k": ["--team", "t"]}, ledger=ledger) as gw, gw.client(gw.keys["k"]) as client:
        refuse_poison(gw)
        statuses = []
        for model in ["fake-chat", POISON, "fake-chat", "fake-chat", POISON, "fake-chat"] + ["fake-chat"] * 5:
            statuses.append(client.post(CHAT, json={**GOOD, "model": model}).status_code)
        assert statuses.count(200) == 9 and statuses.count(404) == 2
        wait_for(lambda: len(gw.rows()) == 9 and len(gw.rows("ledger_dead_letter")) == 2, "rows and dead letters")
        assert client.post(CHAT, json=GOOD).status_code == 200
        wait_for(lambda: len(gw.rows()) == 10, "a row written after the refused ones")
    rows, letters = gw.rows(), gw.rows("ledger_dead_letter")
    assert len(rows) == 10 and {row.requested_model for row in rows} == {"fake-chat"}
    assert len(letters) == 2
    for letter in letters:
        assert "refused: poison row" in letter.error and POISON in letter.row and not letter.salvaged


def test_a_ledger_that_cannot_keep_up_answers_503_and_then_drains(served: ServeFactory) -> None:
    overrides = {"storage": {"flush_interval_ms": 10, "max_pending_rows": 3}}
    with served(overrides, keys={"k": ["--team", "t"]}) as gw, gw.client(gw.keys["k"]) as client:
        lock = sqlite3.connect(gw.db, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the database stops taking writes (readers go on)
        try:
            replies = [client.post(CHAT, json=GOOD) for _ in range(8)]
            statuses = [reply.status_code for reply in replies]
            assert statuses[:3] == [200, 200, 200] and statuses[3:] == [503] * 5, statuses
            error = replies[-1].json()["error"]
            assert error["code"] == "ledger_backlog" and replies[-1].headers["retry-after"] == "1"
            assert client.get("/readyz").status_code == 200  # the process itself is fine
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        wait_for(lambda: len(gw.rows()) == 3, "the queued rows, once the database is back")
        wait_for(lambda: client.post(CHAT, json=GOOD).status_code == 200, "admission once the queue drained")
    rows = gw.rows()
    assert len(rows) == 4 and {row.http_status for row in rows} == {200}  # refused requests did nothing: no row
