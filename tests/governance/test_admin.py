"""The admin API and `GET /v1/margin/usage`: who may call what, and that nobody sees another team's usage."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from tests.governance.conftest import bearer, make_key
from tests.helpers import fake_settings, gateway, reserved_input

CHAT = "/v1/chat/completions"
BODY = {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def test_admin_endpoints_need_an_admin_key(db_path: Path) -> None:
    _, user = make_key(db_path, name="u", team="search")
    async with gateway(fake_settings(db_path)) as gw:
        assert (await gw.http.get("/admin/keys")).status_code == 401
        denied = await gw.http.get("/admin/keys", headers=bearer(user))
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "permission_denied"
        assert (await gw.http.put("/admin/budgets", json={}, headers=bearer(user))).status_code == 403


async def test_keys_budgets_and_limits_through_the_api(db_path: Path) -> None:
    _, admin = make_key(db_path, name="root", team="ops", is_admin=True)
    async with gateway(fake_settings(db_path)) as gw:
        created = await gw.http.post(
            "/admin/keys",
            json={"name": "bot", "team": "search", "tags": {"feature": "qa"}, "policy": {"pii": "redact"}},
            headers=bearer(admin),
        )
        assert created.status_code == 201
        new = created.json()
        assert new["key"].startswith("mgn_") and new["team"] == "search" and new["policy"] == {"pii": "redact"}
        fits_one = Decimal(reserved_input(BODY) * 1 + 4 * 2 + 1) / 10**6  # $1 / $2 a million; the 2nd: over it
        budget = {
            "name": "bot-cap",
            "scope": {"kind": "key", "value": new["id"]},
            "usd": str(fits_one),
            "period": "day",
        }
        assert (await gw.http.put("/admin/budgets", json=budget, headers=bearer(admin))).status_code == 200
        bad = await gw.http.put("/admin/budgets", json={**budget, "usd": "-1"}, headers=bearer(admin))
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "usd"
        unknown = await gw.http.put(
            "/admin/limits", json={"scope": {"kind": "global"}, "rpx": 1}, headers=bearer(admin)
        )
        assert unknown.status_code == 400
        assert (await gw.http.post(CHAT, json=BODY, headers=bearer(new["key"]))).status_code == 200
        assert (await gw.http.post(CHAT, json=BODY, headers=bearer(new["key"]))).status_code == 429
        await gw.services.drain()
        listing = (await gw.http.get("/admin/budgets", headers=bearer(admin))).json()["data"]
        assert (
            listing[0]["name"] == "bot-cap" and listing[0]["spent"] == "0.000009000" and listing[0]["source"] == "admin"
        )
        revoked = await gw.http.delete(f"/admin/keys/{new['id']}", headers=bearer(admin))
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        assert (await gw.http.post(CHAT, json=BODY, headers=bearer(new["key"]))).status_code == 401
        missing = await gw.http.delete("/admin/budgets/nope", headers=bearer(admin))
        assert missing.status_code == 404


async def test_config_rules_cannot_be_deleted_through_the_api(db_path: Path) -> None:
    _, admin = make_key(db_path, name="root", is_admin=True)
    budget = {"name": "cfg", "scope": {"kind": "global"}, "usd": "10"}
    async with gateway(fake_settings(db_path, budgets=[budget])) as gw:
        response = await gw.http.delete("/admin/budgets/cfg", headers=bearer(admin))
        assert response.status_code == 409 and "config file" in response.json()["error"]["message"]


async def test_usage_is_private_to_the_caller(db_path: Path) -> None:
    _, alice = make_key(db_path, name="alice", team="search")
    _, bob = make_key(db_path, name="bob", team="ads")
    _, admin = make_key(db_path, name="root", is_admin=True)
    budgets = [
        {"name": "search", "scope": {"kind": "team", "value": "search"}, "usd": "1"},
        {"name": "ads", "scope": {"kind": "team", "value": "ads"}, "usd": "1"},
    ]
    async with gateway(fake_settings(db_path, budgets=budgets)) as gw:
        await gw.http.post(CHAT, json=BODY, headers=bearer(alice))
        for _ in range(3):
            await gw.http.post(CHAT, json=BODY, headers=bearer(bob))
        await gw.services.outbox.flush()
        mine = (await gw.http.get("/v1/margin/usage", headers=bearer(alice))).json()
        assert mine["key"]["name"] == "alice" and mine["totals"]["requests"] == 1
        assert [b["name"] for b in mine["budgets"]] == ["search"]  # not the ads budget
        grouped = (await gw.http.get("/v1/margin/usage?by=team", headers=bearer(alice))).json()
        assert [g["key"] for g in grouped["groups"]] == ["search"]
        everyone = (await gw.http.get("/admin/usage?by=team", headers=bearer(admin))).json()
        assert {g["key"]: g["requests"] for g in everyone["groups"]} == {"search": 1, "ads": 3}


async def test_a_flag_argument_its_action_does_not_use_is_refused_but_an_old_one_loads(db_path: Path) -> None:
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from margin.ledger import db
    from margin.ledger.models import gov_rules

    _, admin = make_key(db_path, name="root", is_admin=True)
    old = {"name": "old", "target": {"kind": "model", "value": "fake-chat"}, "action": "disable", "max_tokens": 9}
    engine = db.make_sync_engine(f"sqlite:///{db_path}")
    with engine.begin() as connection:  # stored before creation was strict: it must still load
        connection.execute(sa.insert(gov_rules).values(kind="flag", name="old", spec=old, updated_at=datetime.now(UTC)))
    engine.dispose()
    async with gateway(fake_settings(db_path)) as gw:
        listed = (await gw.http.get("/admin/flags", headers=bearer(admin))).json()["data"]
        assert [(f["name"], f["max_tokens"]) for f in listed] == [("old", 9)]
        chat = await gw.http.post(CHAT, json={**BODY, "model": "fake-chat"}, headers=bearer(admin))
        assert chat.status_code == 403 and "old" in chat.json()["error"]["message"]  # still in force
        new = {"name": "new", "target": {"kind": "global"}, "action": "disable", "model": "priced"}
        refused = await gw.http.put("/admin/flags", json=new, headers=bearer(admin))
        assert refused.status_code == 400 and "disable does not use `model`" in refused.json()["error"]["message"]
        new = {"name": "new", "target": {"kind": "global"}, "action": "force_model", "model": "priced"}
        assert (await gw.http.put("/admin/flags", json=new, headers=bearer(admin))).status_code == 200


async def test_a_rule_that_could_apply_to_nothing_or_break_every_request_is_refused(db_path: Path) -> None:
    """A `force_model` flag naming a model the gateway lacks was stored (200), and every request it covered was a
    404 for a model its client never asked for; a scope value that is empty or holds control characters (no key,
    team, tag or `user` can) was stored and silently governed nothing. Now 400 naming it, nothing stored, a
    `failed` audit row; an alias is a model's name for `force_model`, as for a request."""
    _, admin = make_key(db_path, name="root", is_admin=True)
    routes = {"cheap": {"policy": "lowest-cost", "ladder": ["priced", "fake-chat"]}}
    async with gateway(fake_settings(db_path, routes=routes)) as gw:
        force = {"name": "to", "target": {"kind": "global"}, "action": "force_model"}
        for model in ("nope", "cheap"):  # not a model; a routed name (the flag resolves models, not routes)
            refused = await gw.http.put("/admin/flags", json={**force, "model": model}, headers=bearer(admin))
            error = refused.json()["error"]
            assert refused.status_code == 400 and error["param"] == "model" and f"`{model}`" in error["message"]
        budget = {"name": "b", "usd": "1"}
        for scope in (
            {"kind": "team", "value": "a\u0000b"},
            {"kind": "key", "value": ""},
            {"kind": "user", "value": "al\nice"},
            {"kind": "team", "value": "t", "org": "a\u007f"},
        ):
            refused = await gw.http.put("/admin/budgets", json={**budget, "scope": scope}, headers=bearer(admin))
            assert refused.status_code == 400 and "control characters" in refused.json()["error"]["message"], scope
        assert (await gw.http.get("/admin/flags", headers=bearer(admin))).json()["data"] == []
        assert (await gw.http.get("/admin/budgets", headers=bearer(admin))).json()["data"] == []
        audit = (await gw.http.get("/admin/audit", headers=bearer(admin))).json()["data"]
        assert [row["outcome"] for row in audit] == ["failed"] * 6
        chat = await gw.http.post(CHAT, json=BODY, headers=bearer(admin))
        assert chat.status_code == 200 and chat.json()["model"] == "priced"
        alias = await gw.http.put("/admin/flags", json={**force, "model": "fc"}, headers=bearer(admin))
        assert alias.status_code == 200
        forced = await gw.http.post(CHAT, json=BODY, headers=bearer(admin))
        assert forced.status_code == 200 and forced.json()["model"] == "fake-chat"


async def test_usage_reads_refuse_a_parameter_they_do_not_read(db_path: Path) -> None:
    """`?sinse=7d` (a typo) answered all time, `?cursor=` (these reads do not page) was ignored and `?by=model&by=team`
    grouped by the last: each a 400 naming the parameter now, on both usage reads (as `/admin/audit` did); a bad
    `since` or `until` names which one it was."""
    _, admin = make_key(db_path, name="root", is_admin=True)
    _, user = make_key(db_path, name="u", team="search")
    async with gateway(fake_settings(db_path)) as gw:
        for path, key in (("/admin/usage", admin), ("/v1/margin/usage", user)):
            for query, param in (
                ("sinse=7d", "sinse"),
                ("cursor=abc", "cursor"),
                ("by=model&by=team", "by"),
                ("since=-1d", "since"),
                ("since=7d&until=nope", "until"),
            ):
                refused = await gw.http.get(f"{path}?{query}", headers=bearer(key))
                assert refused.status_code == 400, (path, query, refused.text)
                assert refused.json()["error"]["param"] == param, (path, query, refused.text)
            assert (await gw.http.get(f"{path}?since=7d&by=model&limit=5", headers=bearer(key))).status_code == 200
        assert (await gw.http.get("/v1/margin/usage?user=alice", headers=bearer(user))).status_code == 200
        assert (await gw.http.get("/admin/usage?user=alice", headers=bearer(admin))).json()["error"]["param"] == "user"
        assert (await gw.http.get("/admin/audit?limit=5&limit=6", headers=bearer(admin))).status_code == 400


async def test_key_times_are_listed_with_their_zone(db_path: Path) -> None:
    """On SQLite, `GET /admin/keys` showed `created_at` and `revoked_at` without a zone (`2026-12-07T02:46:52`,
    which JavaScript's Date reads as local time) beside `expires_at` with one: every time is UTC with `+00:00`."""
    _, admin = make_key(db_path, name="root", is_admin=True)
    old_id, _ = make_key(db_path, name="old")
    async with gateway(fake_settings(db_path)) as gw:
        assert (await gw.http.delete(f"/admin/keys/{old_id}", headers=bearer(admin))).status_code == 200
        listed = (await gw.http.get("/admin/keys", headers=bearer(admin))).json()["data"]
        times = [key[field] for key in listed for field in ("created_at", "revoked_at") if key[field]]
        assert len(times) == 3 and all(datetime.fromisoformat(t).utcoffset() == timedelta(0) for t in times), times


async def test_two_admins_revoking_each_other_at_once_leave_one(tmp_path: Path) -> None:
    """On SQLite the last-admin rule read the admin keys before either revocation wrote (its FOR UPDATE is
    PostgreSQL's): two admins revoking each other at once were both answered 200 and the gateway had no admin key
    left. The revocations now take turns: one is revoked, and the other is refused, either 409 `last_admin_key` (it
    was authenticated before the first revocation committed) or 401 `invalid_api_key` (its own key was revoked
    before it was authenticated, as when the first request ends before the second is read)."""
    refusals = {409: "last_admin_key", 401: "invalid_api_key"}
    for round_ in range(4):
        db_path = tmp_path / f"round-{round_}.db"
        first, first_key = make_key(db_path, name="a", is_admin=True)
        second, second_key = make_key(db_path, name="b", is_admin=True)
        async with gateway(fake_settings(db_path)) as gw:
            answers = await asyncio.gather(
                gw.http.delete(f"/admin/keys/{second}", headers=bearer(first_key)),
                gw.http.delete(f"/admin/keys/{first}", headers=bearer(second_key)),
            )
            codes = sorted(answer.status_code for answer in answers)
            assert codes in ([200, 401], [200, 409]), [a.text for a in answers]
            refused = next(answer for answer in answers if answer.status_code != 200)
            assert refused.json()["error"]["code"] == refusals[refused.status_code]
            still = [(await gw.http.get("/admin/keys", headers=bearer(k))).status_code for k in (first_key, second_key)]
            assert sorted(still) == [200, 401], still
