"""auth: open mode with no keys, bearer keys once keys exist, revocation, tags."""

from __future__ import annotations

from pathlib import Path

import pytest

from margin import keys
from margin.errors import InvalidRequest
from margin.guard.pseudonym import UserPseudonyms
from margin.ledger import db
from margin.pipeline.steps.auth import parse_tag_header
from tests.helpers import fake_settings, gateway

CHAT = "/v1/chat/completions"
BODY = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}


def make_key(db_path: Path, team: str = "search", **tags: str) -> tuple[str, str]:
    url = f"sqlite:///{db_path}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    record, key = keys.create_key(engine, keys.NewKey("tester", team, tags))
    engine.dispose()
    return record.id, key


async def test_open_mode_without_keys_attributes_to_anonymous(db_path: Path) -> None:
    async with gateway(fake_settings(db_path)) as gw:
        response = await gw.http.post(CHAT, json=BODY, headers={"authorization": "Bearer whatever"})
        assert response.status_code == 200
        row = (await gw.rows())[0]
        assert row.key_id is None and row.team is None


async def test_keys_required_once_one_exists(db_path: Path) -> None:
    key_id, key = make_key(db_path, feature="search-box")
    async with gateway(fake_settings(db_path)) as gw:
        missing = await gw.http.post(CHAT, json=BODY)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
        wrong = await gw.http.post(CHAT, json=BODY, headers={"authorization": "Bearer mgn_x_y"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        models = await gw.http.get("/v1/models")
        assert models.status_code == 401
        headers = {"authorization": f"Bearer {key}", "x-margin-tags": "customer=acme, feature=spoofed"}
        ok = await gw.http.post(CHAT, json={**BODY, "user": "u-42"}, headers=headers)
        assert ok.status_code == 200
        rows = await gw.rows()
        assert len(rows) == 1  # rejected-before-auth requests have nobody to bill: no row
        row = rows[0]
        assert (row.key_id, row.team, row.user) == (key_id, "search", UserPseudonyms()("u-42"))  # never raw
        assert row.tags == {"customer": "acme", "feature": "search-box"}  # the key's tag wins


async def test_revoked_key_stops_working(db_path: Path) -> None:
    key_id, key = make_key(db_path)
    make_key(db_path)  # another active key keeps the gateway closed
    settings = fake_settings(db_path, server={"key_cache_ttl_s": 0})
    async with gateway(settings) as gw:
        headers = {"authorization": f"Bearer {key}"}
        assert (await gw.http.post(CHAT, json=BODY, headers=headers)).status_code == 200
        engine = db.make_sync_engine(f"sqlite:///{db_path}")
        keys.revoke_key(engine, key_id)
        engine.dispose()
        assert (await gw.http.post(CHAT, json=BODY, headers=headers)).status_code == 401


async def test_tag_header_rejects_unknown_keys(db_path: Path) -> None:
    async with gateway(fake_settings(db_path)) as gw:
        response = await gw.http.post(CHAT, json=BODY, headers={"x-margin-tags": "secret=1"})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "x-margin-tags"


async def test_tag_values_sent_as_utf8_are_stored_as_sent(db_path: Path) -> None:
    """Header bytes arrive as Latin-1: UTF-8 `crêpe` read `crÃªpe` (letters to the pattern) and was stored so,
    where the report, the dashboard and a `customer=crêpe` rule never found it, and `zoë` (`zoÃ«`) was a 400;
    `—` is still refused (not a letter)."""
    async with gateway(fake_settings(db_path)) as gw:
        for sent in ("feature=crêpe", "customer=zoë"):
            answer = await gw.http.post(CHAT, json=BODY, headers={b"x-margin-tags": sent.encode()})
            assert answer.status_code == 200, answer.text
        latin = {b"x-margin-tags": "feature=café".encode("latin-1")}  # not UTF-8: read as Latin-1, as before
        assert (await gw.http.post(CHAT, json=BODY, headers=latin)).status_code == 200
        dash = await gw.http.post(CHAT, json=BODY, headers={b"x-margin-tags": "feature=a—b".encode()})
        assert dash.status_code == 400 and dash.json()["error"]["param"] == "x-margin-tags"
        rows = await gw.rows()
    assert [row.tags for row in rows[:3]] == [{"feature": "crêpe"}, {"customer": "zoë"}, {"feature": "café"}]


def test_parse_tag_header() -> None:
    allowed = {"feature", "customer"}
    assert parse_tag_header("feature=a, customer=b-2,", allowed) == {"feature": "a", "customer": "b-2"}
    with pytest.raises(InvalidRequest):
        parse_tag_header("feature", allowed)
    with pytest.raises(InvalidRequest):
        parse_tag_header("feature=has space", allowed)


def test_key_format_and_hash_only_storage(db_path: Path) -> None:
    key_id, key = make_key(db_path)
    assert key.startswith(f"mgn_{key_id}_")
    engine = db.make_sync_engine(f"sqlite:///{db_path}")
    with engine.connect() as connection:
        stored = connection.exec_driver_sql("select key_hash from api_keys").scalar_one()
    engine.dispose()
    assert stored == keys.hash_key(key) and key not in stored
