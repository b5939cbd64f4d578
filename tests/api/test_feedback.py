"""POST /v1/margin/feedback against the real ASGI app: ownership, idempotency, errors, and the task metric."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from margin import keys
from margin.cli import app
from margin.economics.money import from_nanousd, usd_str
from margin.ledger import db
from margin.ledger.models import feedback
from margin.report.business import tasks
from margin.report.queries import Window
from tests.helpers import fake_settings, gateway

FEEDBACK = "/v1/margin/feedback"
CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "a b c"}]}


def _keys(db_path: Path) -> dict[str, tuple[str, str]]:
    url = f"sqlite:///{db_path}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    made = {}
    for name, admin in (("alice", False), ("bob", False), ("root", True)):
        record, key = keys.create_key(engine, keys.NewKey(name, "t", {}, None, admin, None))
        made[name] = (record.id, key)
    engine.dispose()
    return made


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _stored(db_path: Path) -> dict[str, sa.Row[tuple[object, ...]]]:
    engine = db.make_sync_engine(f"sqlite:///{db_path}")
    with engine.connect() as connection:
        found = {r.request_id: r for r in connection.execute(sa.select(feedback))}
    engine.dispose()
    return found


async def test_feedback_ownership_idempotency_and_errors(db_path: Path) -> None:
    made = _keys(db_path)
    alice, bob, root = (_auth(made[n][1]) for n in ("alice", "bob", "root"))
    async with gateway(fake_settings(db_path)) as gw:
        ids = []
        for _ in range(2):
            response = await gw.http.post(
                "/v1/chat/completions", json=CHAT, headers={**alice, "x-margin-tags": "task_id=t1"}
            )
            assert response.status_code == 200
            ids.append(response.headers["x-margin-request-id"])
        # posted at once: the row may still wait in the outbox, and must be found anyway
        first = await gw.http.post(FEEDBACK, json={"request_id": ids[0], "success": False}, headers=alice)
        assert first.status_code == 200, first.text
        assert first.json()["data"] == [{"request_id": ids[0], "success": False, "score": None, "value": None}]
        same = await gw.http.post(FEEDBACK, json={"request_id": ids[0], "success": False}, headers=alice)
        assert same.status_code == 200 and _stored(db_path)[ids[0]].revisions == 1  # a replay changes nothing
        body = {"request_id": ids[1], "success": True, "score": 0.75, "value": "0.10"}
        assert (await gw.http.post(FEEDBACK, json=body, headers=alice)).status_code == 200

        # another key's request is answered exactly as an id that does not exist: no existence oracle
        foreign = await gw.http.post(FEEDBACK, json={"request_id": ids[0], "success": True}, headers=bob)
        absent = await gw.http.post(FEEDBACK, json={"request_id": ids[0][:-4] + "0000", "success": True}, headers=bob)
        assert foreign.status_code == absent.status_code == 404
        assert foreign.json()["error"]["message"].replace(ids[0], "X") == absent.json()["error"]["message"].replace(
            ids[0][:-4] + "0000", "X"
        )
        assert {k: v for k, v in foreign.json()["error"].items() if k != "message"} == {
            k: v for k, v in absent.json()["error"].items() if k != "message"
        }
        assert _stored(db_path)[ids[0]].success is False  # bob changed nothing
        unknown = await gw.http.post(FEEDBACK, json={"request_id": "nope", "success": True}, headers=alice)
        assert unknown.status_code == 404
        assert unknown.json()["error"] == {
            "message": "no request 'nope' made with this key in the ledger",
            "type": "invalid_request_error",
            "param": "request_id",
            "code": "not_found",
        }
        for bad, param in (
            ({"request_id": ids[0], "success": "yes"}, "success"),
            ({"request_id": ids[0], "score": "high"}, "score"),
            ({"request_id": ids[0], "success": True, "colour": 1}, "colour"),
            ({"request_id": ids[0]}, "success"),
            ({"success": True}, "request_id"),
            ({"request_id": ids[0], "success": True, "value": "lots"}, "value"),
        ):
            response = await gw.http.post(FEEDBACK, json=bad, headers=alice)
            assert response.status_code == 400 and response.json()["error"]["param"] == param, bad
        missing_key = await gw.http.post(FEEDBACK, json={"request_id": ids[0], "success": True})
        assert missing_key.status_code == 401

        # a batch lands whole or not at all
        batch = [{"request_id": ids[0], "success": True}, {"request_id": "nope", "success": True}]
        assert (await gw.http.post(FEEDBACK, json=batch, headers=root)).status_code == 404
        assert _stored(db_path)[ids[0]].success is False
        # an admin key may grade anyone's request; a changed outcome replaces the old one
        changed = await gw.http.post(FEEDBACK, json=[{"request_id": ids[0], "success": True}], headers=root)
        assert changed.status_code == 200
        rows = await gw.rows()
    stored = _stored(db_path)
    assert stored[ids[0]].success is True and stored[ids[0]].revisions == 2
    assert stored[ids[1]].value_nanousd == 100_000_000 and stored[ids[1]].score == 0.75
    engine = db.make_sync_engine(f"sqlite:///{db_path}")
    [total] = tasks(engine, Window())
    engine.dispose()
    assert (total.tasks, total.graded_tasks, total.successful_tasks) == (1, 1, 1)  # both requests are task t1
    assert total.cost_per_successful_task_usd == sum(Decimal(r.cost_nanousd) for r in rows) / Decimal(10**9)


async def test_feedback_import_cli(db_path: Path, tmp_path: Path) -> None:
    async with gateway(fake_settings(db_path)) as gw:
        ids = []
        for _ in range(3):
            response = await gw.http.post("/v1/chat/completions", json=CHAT)
            ids.append(response.headers["x-margin-request-id"])
        await gw.rows()
    runner = CliRunner()
    jsonl = tmp_path / "f.jsonl"
    jsonl.write_text(f'{{"request_id": "{ids[0]}", "success": true}}\n{{"request_id": "{ids[1]}", "score": 0.5}}\n')
    result = runner.invoke(app, ["feedback", "import", str(jsonl), "--db", str(db_path)])
    assert result.exit_code == 0 and "recorded 2 outcomes" in result.output
    csv_file = tmp_path / "f.csv"
    csv_file.write_text(f"request_id,success,score,value\n{ids[2]},false,,\n{ids[0]},0,0.1,1.5\n")
    assert runner.invoke(app, ["feedback", "import", str(csv_file), "--db", str(db_path)]).exit_code == 0
    stored = _stored(db_path)
    assert stored[ids[2]].success is False and stored[ids[0]].success is False
    assert stored[ids[0]].value_nanousd == 1_500_000_000 and stored[ids[0]].revisions == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(f'{{"request_id": "{ids[1]}", "success": true}}\n{{"request_id": "ghost", "success": true}}\n')
    result = runner.invoke(app, ["feedback", "import", str(bad), "--db", str(db_path)])
    assert result.exit_code == 2 and "ghost" in result.output
    assert _stored(db_path)[ids[1]].success is None  # nothing of the failed file was written


async def test_another_teams_requests_and_feedback_never_join_a_teams_task(db_path: Path) -> None:
    """Any key may send any `task_id`: bravo tags requests with alpha's task ids, T after alpha began it (on a
    shared task alpha's table added up bravo's cost and the $999 bravo posts with its outcome) and U before
    (bravo's anchor took the task from alpha's table). Each team's dashboard shows its own tasks only."""
    url = f"sqlite:///{db_path}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    made = {}
    for name, team, admin in (("alice", "alpha", False), ("mallory", "bravo", False), ("root", None, True)):
        record, key = keys.create_key(engine, keys.NewKey(name, team, {}, "acme", admin, None))
        made[name] = (record.id, _auth(key))
    engine.dispose()
    sent: dict[str, list[str]] = {"alice": [], "mallory": []}
    async with gateway(fake_settings(db_path)) as gw:
        for who, task in (("mallory", "U"), ("alice", "T"), ("alice", "U"), ("mallory", "T"), ("mallory", "T")):
            headers = {**made[who][1], "x-margin-tags": f"task_id={task}"}
            response = await gw.http.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert response.status_code == 200
            sent[who].append(response.headers["x-margin-request-id"])
            await gw.rows()  # in the ledger before the next one: the anchors are in the order sent
        for who, request_id, value in (("alice", sent["alice"][0], "1"), ("mallory", sent["mallory"][-1], "999")):
            body = {"request_id": request_id, "success": True, "value": value}
            assert (await gw.http.post(FEEDBACK, json=body, headers=made[who][1])).status_code == 200
        pages = {}
        for who, (_, auth) in made.items():
            pages[who] = (await gw.http.get("/dashboard/api/margin", headers=auth)).json()
        rows = await gw.rows()

    def usd(request_ids: list[str]) -> str | None:
        return usd_str(from_nanousd(sum(r.cost_nanousd for r in rows if r.request_id in request_ids)))

    assert pages["alice"]["tasks"] == {
        "key": None,
        "tasks": 2,
        "graded_tasks": 1,
        "successful_tasks": 1,
        "success_rate": 1.0,
        "cost_usd": usd(sent["alice"]),
        "graded_cost_usd": usd(sent["alice"][:1]),
        "cost_per_successful_task_usd": usd(sent["alice"][:1]),
        "unpriced_requests": 0,
        "mean_score": None,
        "value_usd": "1.000000000",
    }
    bravo = pages["mallory"]["tasks"]
    assert (bravo["tasks"], bravo["cost_usd"], bravo["value_usd"]) == (2, usd(sent["mallory"]), "999.000000000")
    assert (pages["root"]["tasks"]["tasks"], pages["root"]["tasks"]["value_usd"]) == (4, "1000.000000000")
