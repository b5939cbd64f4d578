"""`/dashboard` auth rules: admin sees all, a team key sees its team only, no/bad key → 401 or login."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from margin import keys
from margin.ledger import db
from margin.ledger.models import api_keys
from tests.dashboard.seed import seed
from tests.helpers import Gateway, fake_settings, gateway

PAGES = ("", "/breakdown", "/latency", "/savings", "/budgets", "/backends")


@pytest.fixture
async def seeded(db_path: Path) -> AsyncIterator[tuple[Gateway, dict[str, str]]]:
    made = seed(db_path)
    budgets = [
        {"name": "search-month", "scope": {"kind": "team", "value": "search"}, "usd": "10", "period": "month"},
        {"name": "ads-day", "scope": {"kind": "team", "value": "ads"}, "tokens": 100000, "period": "day"},
    ]
    async with gateway(fake_settings(db_path, budgets=budgets)) as gw:
        yield gw, made


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def get_json(gw: Gateway, path: str, key: str | None) -> Any:
    response = await gw.http.get(f"/dashboard/api{path}", headers=bearer(key) if key else {})
    assert response.status_code == 200, response.text
    return response.json()


async def test_no_key_redirects_html_to_login_and_json_gets_401(seeded: tuple[Gateway, dict[str, str]]) -> None:
    gw, _ = seeded
    for page in PAGES:
        html = await gw.http.get(f"/dashboard{page}?since=24h")
        assert html.status_code == 303
        assert html.headers["location"].startswith("/dashboard/login?next=%2Fdashboard")
        api = await gw.http.get(f"/dashboard/api/{page.strip('/') or 'overview'}")
        assert api.status_code == 401
        assert api.json()["error"]["code"] == "missing_api_key"
    bad = await gw.http.get("/dashboard?format=json", headers=bearer("mgn_nope_nope"))
    assert bad.status_code == 401
    assert (await gw.http.get("/dashboard/login")).status_code == 200


async def test_admin_sees_every_page_and_every_team(seeded: tuple[Gateway, dict[str, str]]) -> None:
    gw, made = seeded
    for page in PAGES:
        response = await gw.http.get(f"/dashboard{page}", headers=bearer(made["admin"]))
        assert response.status_code == 200, page
        assert "text/html" in response.headers["content-type"]
        assert "default-src 'none'" in response.headers["content-security-policy"]
    teams = await get_json(gw, "/breakdown?by=team", made["admin"])
    assert {g["key"] for g in teams["groups"]} == {"search", "ads"}
    budgets = await get_json(gw, "/budgets", made["admin"])
    assert {b["name"] for b in budgets["budgets"]} == {"search-month", "ads-day"}


async def test_team_key_sees_only_its_team(seeded: tuple[Gateway, dict[str, str]]) -> None:
    gw, made = seeded
    search = await get_json(gw, "/overview", made["search"])
    admin_teams = await get_json(gw, "/breakdown?by=team", made["admin"])
    search_group = next(g for g in admin_teams["groups"] if g["key"] == "search")
    assert search["totals"]["cost_usd"] == search_group["cost_usd"] == "0.011000000"
    assert search["totals"]["requests"] == 5
    assert search["viewer"] == "team search"
    models = await get_json(gw, "/breakdown?by=model", made["search"])
    assert {g["key"] for g in models["groups"]} == {"fake-chat"}
    latency = await get_json(gw, "/latency", made["ads"])
    assert {m["model"] for m in latency["models"]} == {"priced", "mystery"}
    backends = await get_json(gw, "/backends", made["ads"])
    assert {b["backend"]: b["requests"] for b in backends["backends"]} == {"api": 3, "fake": 0}
    budgets = await get_json(gw, "/budgets", made["search"])
    assert [b["name"] for b in budgets["budgets"]] == ["search-month"]
    for path in ("/dashboard/api/breakdown?by=team", "/dashboard/breakdown?by=team"):
        refused = await gw.http.get(path, headers=bearer(made["search"]))
        assert refused.status_code == 403
        assert "admin key" in refused.text
    page = await gw.http.get("/dashboard/breakdown", headers=bearer(made["search"]))
    assert 'id="by-team"' not in page.text
    assert "ads" not in page.text


async def test_key_without_team_sees_only_its_own_rows(seeded: tuple[Gateway, dict[str, str]]) -> None:
    gw, made = seeded
    loner = await get_json(gw, "/overview", made["loner"])
    assert loner["totals"]["requests"] == 0
    assert loner["totals"]["cost_usd"] == "0.000000000"
    # a self-hosted backend's idle time is every team's: the admin sees its cost, a team or a lone key none (the
    # lone key was shown the whole backend's idle cost as its own)
    for key, shown in (("admin", True), ("search", False), ("loner", False)):
        backends = {b["backend"]: b for b in (await get_json(gw, "/backends", made[key]))["backends"]}
        assert (backends["fake"]["idle_cost_usd"] is not None) is shown, key


async def test_login_form_sets_a_strict_httponly_cookie(seeded: tuple[Gateway, dict[str, str]]) -> None:
    gw, made = seeded
    form = {"content-type": "application/x-www-form-urlencoded"}
    wrong = await gw.http.post("/dashboard/login", content="key=mgn_bad_bad", headers=form)
    assert wrong.status_code == 401
    assert "invalid or revoked" in wrong.text
    assert "set-cookie" not in wrong.headers
    foreign = await gw.http.post(
        "/dashboard/login", content=f"key={made['admin']}", headers={**form, "origin": "http://evil.example"}
    )
    assert foreign.status_code == 403
    ok = await gw.http.post(
        "/dashboard/login?next=/dashboard/latency",
        content=f"key={made['ads']}",
        headers={**form, "origin": "http://localhost"},
    )
    assert ok.status_code == 303
    assert ok.headers["location"] == "/dashboard/latency"
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/dashboard" in cookie
    page = await gw.http.get("/dashboard/api/overview")  # the client kept the cookie
    assert page.json()["viewer"] == "team ads"
    out = await gw.http.post("/dashboard/logout")
    assert out.status_code == 303
    assert (await gw.http.get("/dashboard/api/overview")).status_code == 401


async def test_login_redirects_only_inside_the_dashboard(seeded: tuple[Gateway, dict[str, str]]) -> None:
    gw, made = seeded
    form = {"content-type": "application/x-www-form-urlencoded"}
    for target in ("//evil.example/x", "https://evil.example", "/admin/keys", "/dashboard//evil.example"):
        response = await gw.http.post(f"/dashboard/login?next={target}", content=f"key={made['admin']}", headers=form)
        assert response.headers["location"] == "/dashboard", target


async def test_revoked_key_loses_access(seeded: tuple[Gateway, dict[str, str]], db_path: Path) -> None:
    gw, made = seeded
    assert (await gw.http.get("/dashboard/api/overview", headers=bearer(made["search"]))).status_code == 200
    engine = db.make_sync_engine(f"sqlite:///{db_path}")
    try:
        keys.revoke_key(engine, made["search"].split("_")[1])
    finally:
        engine.dispose()
    gw.services.keys.forget()
    assert (await gw.http.get("/dashboard/api/overview", headers=bearer(made["search"]))).status_code == 401


async def test_open_mode_shows_everything_like_admin(db_path: Path) -> None:
    async with gateway(fake_settings(db_path)) as gw:  # no keys: open, loopback only (same rule as /admin)
        for page in PAGES:
            assert (await gw.http.get(f"/dashboard{page}")).status_code == 200
        overview = await get_json(gw, "/overview", None)
        assert overview["viewer"].startswith("open mode")
        assert (await gw.http.get("/admin/usage")).status_code == 200


async def test_bad_parameters_are_400(seeded: tuple[Gateway, dict[str, str]]) -> None:
    gw, made = seeded
    for path in ("/dashboard/api/overview?since=1y", "/dashboard/api/breakdown?by=colour"):
        response = await gw.http.get(path, headers=bearer(made["admin"]))
        assert response.status_code == 400, path
    html = await gw.http.get("/dashboard/breakdown?by=colour", headers=bearer(made["admin"]))
    assert html.status_code == 400
    assert "by must be one of" in html.text


def test_sessions_are_signed_expiring_and_never_the_key() -> None:
    from margin.dashboard.auth import Session, Sessions

    sessions = Sessions(b"s" * 32, max_age_s=60)
    token = sessions.issue("0123abcd", now=1_000.5)
    assert sessions.read(token, now=1_030) == Session("0123abcd", 1_000_500)
    assert sessions.read(token, now=1_060.5) is None  # expired
    assert Sessions(b"t" * 32).read(token, now=1_030) is None  # another secret
    forged = token.replace("0123abcd", "ffffffff")
    assert sessions.read(forged, now=1_030) is None
    older = token.replace(".1000500.", ".1000499.")  # an earlier login time, to pass a logout: signed too
    assert sessions.read(older, now=1_030) is None
    old_form = "v1.0123abcd.1060." + token.rsplit(".", 1)[1]
    for junk in ("", "v2", "mgn_0123abcd_" + "x" * 32, token + "x", token.replace("v2.", "v1."), old_form):
        assert sessions.read(junk, now=1_030) is None


def test_session_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from margin.config import ServerConfig
    from margin.dashboard.auth import Sessions
    from margin.errors import ConfigError

    monkeypatch.setenv("MARGIN_TEST_SESSION_SECRET", "a-shared-secret-of-replicas")
    server = ServerConfig(session_secret_env="MARGIN_TEST_SESSION_SECRET")
    one, two = Sessions.from_config(server), Sessions.from_config(server)
    shared = two.read(one.issue("0123abcd"))  # replicas with one secret share sessions
    assert shared is not None and shared.key_id == "0123abcd"
    assert Sessions.from_config(ServerConfig()).read(one.issue("0123abcd")) is None
    monkeypatch.setenv("MARGIN_TEST_SESSION_SECRET", "short")
    with pytest.raises(ConfigError):
        Sessions.from_config(server)


async def test_a_replayed_logout_changes_nothing(seeded: tuple[Gateway, dict[str, str]], db_path: Path) -> None:
    """A logout ends its key's sessions once. Replaying the same (ended) cookie, with a forged Origin, wrote the
    key again and emptied the key cache of every process sharing the store, each time: now it is a no-op."""
    gw, made = seeded
    form = {"content-type": "application/x-www-form-urlencoded", "origin": "http://localhost"}
    ok = await gw.http.post("/dashboard/login", content=f"key={made['ads']}", headers=form)
    cookie = {"cookie": ok.headers["set-cookie"].split(";")[0]}
    assert (await gw.http.post("/dashboard/logout", headers=cookie)).status_code == 303
    engine = db.make_sync_engine(f"sqlite:///{db_path}")
    try:

        def ended() -> Any:
            with engine.connect() as connection:
                return connection.execute(sa.select(api_keys.c.sessions_not_before)).scalars().all()

        first = ended()
        assert any(value is not None for value in first)  # the first logout ended the sessions
        await asyncio.sleep(0.01)  # a later logout would write a later time
        for _ in range(3):
            assert (await gw.http.post("/dashboard/logout", headers=cookie)).status_code == 303
        assert ended() == first
    finally:
        engine.dispose()
