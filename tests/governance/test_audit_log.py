"""The audit log against a running `margin serve` over real HTTP: each admin change is one row naming who,
from where, what and the change before and after; denied and failed attempts are rows too (a flood of them
stays bounded); `GET /admin/audit` pages and filters; no secret reaches the table; `margin audit verify`
passes, then names the row edited in the SQLite file; a change the log cannot record is not made (500)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from margin.keys import hash_key
from tests.governance.conftest import bearer, make_key
from tests.helpers import margin_serve, polls

CONFIG: dict[str, Any] = {
    "backends": {"fake": {"kind": "fake", "output_tokens": 5}},
    "models": {"fake-chat": {"backend": "fake"}},
    "budgets": [{"name": "from-file", "scope": {"kind": "global"}, "usd": "100"}],
}


@dataclass
class Live:
    url: str
    db: Path
    config: Path
    process: subprocess.Popen[bytes]
    admin_id: str
    admin: str
    user_id: str
    user: str

    def call(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = bearer(key) if key is not None else {}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)

    def rows(self) -> list[dict[str, Any]]:
        """Every audit row, oldest first, read from the SQLite file."""
        with sqlite3.connect(self.db) as connection:
            connection.row_factory = sqlite3.Row
            return [dict(row) for row in connection.execute("SELECT * FROM audit_log ORDER BY id")]

    def newest(self, **query: Any) -> dict[str, Any]:
        answer = self.call("GET", "/admin/audit", self.admin, params={"limit": 1, **query})
        assert answer.status_code == 200, answer.text
        entry: dict[str, Any] = answer.json()["data"][0]
        return entry


@contextmanager
def _serve(folder: Path, audit: dict[str, Any]) -> Iterator[Live]:
    db = folder / "ledger.db"
    admin_id, admin = make_key(db, name="root", is_admin=True)
    user_id, user = make_key(db, name="bot", team="search")
    (folder / "margin.yaml").write_text(yaml.safe_dump({**CONFIG, "audit": audit}))
    with margin_serve(db, folder / "serve.log", config=folder / "margin.yaml", ready_s=120) as (url, process):
        yield Live(url, db, folder / "margin.yaml", process, admin_id, admin, user_id, user)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with _serve(tmp_path_factory.mktemp("audit"), {"denied_per_minute": 1000, "denied_total_per_minute": 1000}) as up:
        yield up


def _one_new_row(live: Live, before: int) -> dict[str, Any]:
    rows = live.rows()
    assert len(rows) == before + 1, rows[before:]
    return live.newest()


def test_each_change_is_one_row_with_who_what_and_the_change(live: Live) -> None:
    count = len(live.rows())
    created = live.call("POST", "/admin/keys", live.admin, json={"name": "svc", "team": "search"})
    assert created.status_code == 201
    row = _one_new_row(live, count)
    new_id = created.json()["id"]
    assert (row["action"], row["target"], row["outcome"]) == ("key.create", new_id, "ok")
    assert (row["actor"], row["actor_name"], row["source"]) == (f"key:{live.admin_id}", "root", "http")
    assert row["address"] == "127.0.0.1" and row["request_id"] == created.headers["x-request-id"]
    assert row["before"] is None and row["after"]["name"] == "svc" and row["after"]["team"] == "search"

    budget = {"name": "team-cap", "scope": {"kind": "team", "value": "search"}, "usd": "10"}
    steps: list[tuple[str, str, dict[str, Any] | None, str, str]] = [
        ("PUT", "/admin/budgets", budget, "budget.put", "team-cap"),
        ("PUT", "/admin/budgets", {**budget, "usd": "25"}, "budget.put", "team-cap"),
        ("PUT", "/admin/limits", {"scope": {"kind": "team", "value": "search"}, "rpm": 60}, "limit.put", "team=search"),
        ("PUT", "/admin/flags", {"name": "off", "target": {"kind": "model", "value": "x"}, "action": "disable"},
         "flag.put", "off"),
        ("DELETE", "/admin/limits/team=search", None, "limit.delete", "team=search"),
        ("DELETE", "/admin/flags/off", None, "flag.delete", "off"),
        ("DELETE", "/admin/budgets/team-cap", None, "budget.delete", "team-cap"),
        ("POST", f"/admin/keys/{new_id}/rotate", {"grace_s": 60}, "key.rotate", new_id),
        ("DELETE", f"/admin/keys/{new_id}", None, "key.revoke", new_id),
    ]  # fmt: skip
    seen = {}
    for method, path, body, action, target in steps:
        count = len(live.rows())
        answer = live.call(method, path, live.admin, json=body)
        assert answer.status_code in (200, 201), answer.text
        row = _one_new_row(live, count)
        assert (row["action"], row["target"], row["outcome"], row["actor"]) == (action, target, "ok", row["actor"])
        assert row["actor"] == f"key:{live.admin_id}" and row["request_id"] == answer.headers["x-request-id"]
        seen[(action, path, str(body))] = row
    raised = seen[("budget.put", "/admin/budgets", str({**budget, "usd": "25"}))]
    assert raised["before"]["usd"] == "10" and raised["after"]["usd"] == "25"  # who raised it, from what to what
    deleted = seen[("budget.delete", "/admin/budgets/team-cap", "None")]
    assert deleted["before"]["usd"] == "25" and deleted["after"] is None
    rotated = seen[("key.rotate", f"/admin/keys/{new_id}/rotate", str({"grace_s": 60}))]
    assert rotated["before"]["rotated_at"] is None and rotated["after"]["rotated_at"] is not None
    revoked = seen[("key.revoke", f"/admin/keys/{new_id}", "None")]
    assert revoked["before"]["state"] == "active" and revoked["after"]["state"] == "revoked"


def test_no_secret_or_hash_of_one_reaches_the_table(live: Live) -> None:
    created = live.call("POST", "/admin/keys", live.admin, json={"name": "secretive"})
    first = created.json()["key"]
    second = live.call("POST", f"/admin/keys/{created.json()['id']}/rotate", live.admin, json={}).json()["key"]
    live.call("DELETE", "/admin/keys/nope", live.admin)
    live.call("POST", "/admin/keys", "mgn_00000000_" + "x" * 32, json={"name": "n"})  # a bad key: denied row
    with sqlite3.connect(live.db) as connection:
        dump = "\n".join(repr(row) for row in connection.execute("SELECT * FROM audit_log"))
    assert "secretive" in dump  # the rows are there
    for secret in (first, second, live.admin, live.user, "mgn_00000000_" + "x" * 32):
        for needle in (secret, secret[len("mgn_00000000_") :], hash_key(secret), "Bearer"):
            assert needle not in dump


def test_denied_attempts_are_recorded_and_reads_are_not(live: Live) -> None:
    count = len(live.rows())
    assert live.call("GET", "/admin/keys", live.user).status_code == 403
    assert live.call("GET", "/admin/audit", None).status_code == 401
    assert len(live.rows()) == count  # GET requests are not audited
    assert live.call("PUT", "/admin/budgets", live.user, json={"name": "x"}).status_code == 403
    row = _one_new_row(live, count)
    assert (row["action"], row["outcome"], row["actor"]) == ("budget.put", "denied", f"key:{live.user_id}")
    assert row["after"]["error"] == "permission_denied"
    assert live.call("DELETE", f"/admin/keys/{live.admin_id}", "mgn_bad").status_code == 401
    row = _one_new_row(live, count + 1)
    assert (row["action"], row["outcome"], row["actor"], row["target"]) == (
        "key.revoke",
        "denied",
        "unauthenticated",
        live.admin_id,
    )
    listed = live.call("GET", "/admin/keys", live.admin).json()["data"]  # in id order: find the admin key by id
    assert next(key for key in listed if key["id"] == live.admin_id)["state"] == "active"


def test_a_refused_change_is_a_failed_row(live: Live) -> None:
    count = len(live.rows())
    assert live.call("DELETE", "/admin/keys/0000beef", live.admin).status_code == 404
    row = _one_new_row(live, count)
    assert (row["action"], row["target"], row["outcome"], row["after"]) == (
        "key.revoke",
        "0000beef",
        "failed",
        {"error": "not_found"},
    )


def test_the_listing_pages_newest_first_and_filters(live: Live) -> None:
    started = live.newest()["at"]
    for n in range(5):
        body = {"name": f"page-{n}", "scope": {"kind": "team", "value": f"t{n}"}, "usd": "1"}
        assert live.call("PUT", "/admin/budgets", live.admin, json=body).status_code == 200
    ids, cursor = [], None
    while True:
        query = {"limit": 2, "action": "budget.put", **({"cursor": cursor} if cursor else {})}
        answer = live.call("GET", "/admin/audit", live.admin, params=query).json()
        assert len(answer["data"]) <= 2 and {row["action"] for row in answer["data"]} <= {"budget.put"}
        ids += [row["id"] for row in answer["data"]]
        if (cursor := answer["next_cursor"]) is None:
            break
    assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids))
    assert len([r for r in live.rows() if r["action"] == "budget.put"]) == len(ids)
    one = live.call("GET", "/admin/audit", live.admin, params={"target": "page-3"}).json()["data"]
    assert [row["target"] for row in one] == ["page-3"]
    mine = live.call("GET", "/admin/audit", live.admin, params={"actor": f"key:{live.admin_id}", "since": started})
    assert {row["target"] for row in mine.json()["data"]} >= {f"page-{n}" for n in range(5)}
    assert live.call("GET", "/admin/audit", live.admin, params={"until": started}).json()["data"][0]["at"] < started
    nobody = live.call("GET", "/admin/audit", live.admin, params={"actor": "key:nobody"}).json()
    assert nobody == {"data": [], "next_cursor": None}


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "501"},
        {"limit": "ten"},
        {"action": "key.explode"},
        {"cursor": "not-a-cursor"},
        {"cursor": "x" * 100},
        {"since": "yesterday-ish"},
        {"since": "2026-02-01", "until": "2026-01-01"},
        {"actor": "a" * 300},
        {"target": "bad\x01"},
        {"colour": "blue"},
    ],
)
def test_a_bad_query_is_a_400_naming_it(live: Live, query: dict[str, str]) -> None:
    answer = live.call("GET", "/admin/audit", live.admin, params=query)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert live.call("GET", "/admin/audit", live.user, params=query).status_code == 403  # admin only, first


def test_reloads_over_http_and_by_sighup_are_recorded(live: Live) -> None:
    count = len(live.rows())
    answer = live.call("POST", "/admin/reload", live.admin, json={})
    assert answer.status_code == 200, answer.text
    row = _one_new_row(live, count)
    assert (row["action"], row["source"], row["actor"], row["target"]) == (
        "config.reload",
        "http",
        f"key:{live.admin_id}",
        str(live.config),
    )
    assert row["before"]["budgets"] >= 1 and row["after"] == {**row["before"], "config_file_reread": True}
    live.process.send_signal(signal.SIGHUP)
    _wait_rows(live, count + 2)
    row = _one_new_row(live, count + 1)
    assert (row["action"], row["source"], row["actor"], row["outcome"]) == (
        "config.reload",
        "reload",
        "signal:SIGHUP",
        "ok",
    )
    good = live.config.read_text()
    live.config.write_text("budgets: [{name: broken}]\n")
    try:
        assert live.call("POST", "/admin/reload", live.admin, json={}).status_code == 400
        row = _one_new_row(live, count + 2)
        assert (row["action"], row["outcome"], row["after"]) == ("config.reload", "failed", {"error": "invalid_config"})
        live.process.send_signal(signal.SIGHUP)
        _wait_rows(live, count + 4)
        row = _one_new_row(live, count + 3)
        assert (row["actor"], row["outcome"], row["after"]["error"]) == ("signal:SIGHUP", "failed", "invalid_config")
        assert "budgets" in row["after"]["message"]
    finally:
        live.config.write_text(good)


def _wait_rows(live: Live, count: int) -> None:
    for _ in polls(20):
        if len(live.rows()) >= count:
            return
        time.sleep(0.1)


def test_a_change_the_log_cannot_record_is_not_made(live: Live) -> None:
    """The row is written in the change's transaction: when it cannot be, the change is not made (500)."""
    with sqlite3.connect(live.db) as connection:
        connection.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit refused'); END"
        )
    try:
        body = {"name": "unrecorded", "scope": {"kind": "global"}, "usd": "1"}
        answer = live.call("PUT", "/admin/budgets", live.admin, json=body)
        assert answer.status_code == 500 and answer.json()["error"]["code"] == "internal_error"
        names = [b["name"] for b in live.call("GET", "/admin/budgets", live.admin).json()["data"]]
        assert "unrecorded" not in names
        assert live.call("POST", "/admin/keys", live.admin, json={"name": "unrecorded"}).status_code == 500
        keys = [k["name"] for k in live.call("GET", "/admin/keys", live.admin).json()["data"]]
        assert "unrecorded" not in keys
        reload = live.call("POST", "/admin/reload", live.admin, json={})  # the change is not in the database: not acked
        assert reload.status_code == 500 and reload.json()["error"]["code"] == "internal_error"
    finally:
        with sqlite3.connect(live.db) as connection:
            connection.execute("DROP TRIGGER refuse")


SECRET = "sk-in-the-database-error-0042"  # what the database's error says: never in the row or the answer


def test_a_change_that_crashes_is_a_failed_row_and_the_usual_500(live: Live) -> None:
    """A change that fails with an unexpected exception (here the database refuses the insert: no MarginError)
    is one `failed` row naming the exception's class, not its message; the client gets the usual 500."""
    with sqlite3.connect(live.db) as connection:
        for table in ("gov_rules", "api_keys"):
            connection.execute(
                f"CREATE TRIGGER crash_{table} BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, '{SECRET}'); END"
            )
    try:
        budget = {"name": "crashed", "scope": {"kind": "global"}, "usd": "1"}
        attempts = [
            ("PUT", "/admin/budgets", budget, "budget.put"),
            ("POST", "/admin/keys", {"name": "x"}, "key.create"),
        ]
        for method, path, body, action in attempts:
            count = len(live.rows())
            answer = live.call(method, path, live.admin, json=body)
            assert answer.status_code == 500 and answer.headers["content-type"] == "application/json"
            assert answer.json() == {"error": {"message": "internal error in the gateway", "type": "server_error",
                                               "param": None, "code": "internal_error"}}  # fmt: skip
            row = _one_new_row(live, count)
            assert (row["action"], row["target"], row["outcome"]) == (action, None, "failed")
            assert row["after"] == {"error": "internal_error", "exception": "IntegrityError"} and row["before"] is None
            assert row["actor"] == f"key:{live.admin_id}" and row["request_id"] == answer.headers["x-request-id"]
        assert SECRET not in str(live.rows()[-2:])
    finally:
        with sqlite3.connect(live.db) as connection:
            for table in ("gov_rules", "api_keys"):
                connection.execute(f"DROP TRIGGER crash_{table}")
    verified = _margin("audit", "verify", "--db", str(live.db))
    assert verified.returncode == 0 and "audit log intact" in verified.stdout, verified.stderr


def test_a_client_that_leaves_mid_body_is_not_a_crashed_change(live: Live) -> None:
    """An admin write whose client closes before sending its whole body: no change, no `failed` row (a client
    that leaves is not the gateway failing), and the gateway goes on answering."""
    import socket

    count = len(live.rows())
    host, port = live.url.removeprefix("http://").split(":")
    head = (f"PUT /admin/budgets HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {live.admin}\r\n"
            "content-type: application/json\r\ncontent-length: 1000\r\n\r\n")  # fmt: skip
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + b'{"name": "half')
        time.sleep(0.3)  # the handler is reading the body
    time.sleep(0.5)
    assert live.call("GET", "/admin/budgets", live.admin).status_code == 200
    assert len(live.rows()) == count, live.rows()[count:]


def test_a_change_made_and_recorded_before_its_request_crashed_is_one_ok_row(live: Live) -> None:
    """The rule is saved with its row, then re-reading the stored rules fails (a malformed one, put there by
    hand): a 500, and the log keeps the one `ok` row of the change that was made, no `failed` one after it."""
    with sqlite3.connect(live.db) as connection:
        connection.execute(
            "INSERT INTO gov_rules (kind, name, spec, updated_at) VALUES ('budget', 'junk', '{\"bogus\": 1}', ?)",
            ("2026-01-01 00:00:00.000000",),
        )
    try:
        count = len(live.rows())
        budget = {"name": "made", "scope": {"kind": "team", "value": "nobody"}, "usd": "1000"}
        answer = live.call("PUT", "/admin/budgets", live.admin, json=budget)
        assert answer.status_code == 500 and answer.json()["error"]["code"] == "internal_error"
        row = _one_new_row(live, count)
        assert (row["action"], row["target"], row["outcome"]) == ("budget.put", "made", "ok")
        assert row["request_id"] == answer.headers["x-request-id"]
    finally:
        with sqlite3.connect(live.db) as connection:
            connection.execute("DELETE FROM gov_rules WHERE name = 'junk'")
    assert live.call("DELETE", "/admin/budgets/made", live.admin).status_code == 200


def _margin(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "margin", *args], check=False, capture_output=True, text=True, env=env, timeout=120
    )


def test_verify_passes_then_names_the_row_edited_in_the_file(live: Live) -> None:
    assert (
        live.call(
            "PUT", "/admin/flags", live.admin, json={"name": "v", "target": {"kind": "global"}, "action": "disable"}
        ).status_code
        == 200
    )
    intact = _margin("audit", "verify", "--db", str(live.db))
    assert intact.returncode == 0 and "audit log intact" in intact.stdout, intact.stderr
    rows = live.rows()
    victim = rows[len(rows) // 2]
    with sqlite3.connect(live.db) as connection:
        connection.execute("UPDATE audit_log SET after = ? WHERE id = ?", ('{"usd": "1000000"}', victim["id"]))
    try:
        broken = _margin("audit", "verify", "--db", str(live.db))
        assert broken.returncode == 1
        assert f"broken at row {victim['id']}" in broken.stderr
    finally:
        with sqlite3.connect(live.db) as connection:
            connection.execute("UPDATE audit_log SET after = ? WHERE id = ?", (victim["after"], victim["id"]))
    assert _margin("audit", "verify", "--db", str(live.db)).returncode == 0


def test_a_flood_of_bad_keys_stays_bounded(tmp_path: Path) -> None:
    with _serve(tmp_path, {"denied_per_minute": 3, "denied_total_per_minute": 5}) as flood:
        with httpx.Client(base_url=flood.url, timeout=30) as client:
            for n in range(60):
                bad = {"authorization": f"Bearer mgn_{n:08x}_{'y' * 32}"}
                assert client.post("/admin/keys", json={"name": "x"}, headers=bad).status_code == 401
        denied = [row for row in flood.rows() if row["outcome"] == "denied"]
        assert 1 <= len(denied) <= 6  # 3 a minute from one address (the flood may straddle a minute)
        assert all(row["actor"] == "unauthenticated" and row["address"] == "127.0.0.1" for row in denied)
        assert live_keys(flood) == 2  # nothing was created
        assert flood.call("POST", "/admin/keys", flood.admin, json={"name": "ok"}).status_code == 201  # admins are
        assert flood.rows()[-1]["outcome"] == "ok"  # never bounded


def live_keys(live: Live) -> int:
    return len(live.call("GET", "/admin/keys", live.admin).json()["data"])
