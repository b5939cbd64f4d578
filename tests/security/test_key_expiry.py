"""Keys that expire, against a running `margin serve` over real HTTP (the `openai` SDK as client): an expired key
is refused with 401 `key_expired` everywhere a key is accepted (the API, the admin API, the batch API, the
caller's usage, the dashboard login), also while the gateway still holds it in its key cache; the admin API
sets and shows the expiry and refuses one out of bounds. Before, keys never expired."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from margin import keys
from margin.ledger import db
from margin.ledger.models import api_keys
from tests.helpers import margin_serve

CONFIG = {
    "server": {"key_cache_ttl_s": 600},  # a key found stays cached for the whole test
    "backends": {"fake": {"kind": "fake", "output_tokens": 3}},
    "models": {"fake-chat": {"backend": "fake"}},
}
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def _key(url: str, name: str, *, admin: bool = False, expires_at: datetime | None = None) -> tuple[str, str]:
    """Straight into the database (a test-only path: the CLI and the admin API refuse less than a minute)."""
    engine = db.make_sync_engine(url)
    try:
        expiry: dict[str, Any] = {"expires_at": expires_at} if expires_at is not None else {}
        record, key = keys.create_key(engine, keys.NewKey(name, is_admin=admin, **expiry))
    finally:
        engine.dispose()
    return record.id, key


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(gateway URL, database URL, an admin key that never expires)."""
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db.upgrade(url)
    _, admin = _key(url, "root", admin=True)
    config = tmp_path / "margin.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "storage": {"ledger": url}}))
    with margin_serve(None, tmp_path / "serve.log", config) as (base, _):
        yield base, url, admin


def _client(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)


def test_an_expired_key_is_refused_even_while_cached(served: tuple[str, str, str]) -> None:
    base, url, _ = served
    at = datetime.now(UTC) + timedelta(seconds=4)
    key_id, key = _key(url, "short", expires_at=at)
    with _client(base, key) as client:
        _use_until_expired(client, url, key_id, at)


def _use_until_expired(client: openai.OpenAI, url: str, key_id: str, at: datetime) -> None:
    assert client.chat.completions.create(model="fake-chat", messages=USER).choices  # found: now cached
    engine = db.make_sync_engine(url)  # revoked behind the gateway's back: the cached record still serves
    with engine.begin() as connection:
        connection.execute(api_keys.update().where(api_keys.c.id == key_id).values(revoked_at=datetime.now(UTC)))
    engine.dispose()
    assert client.chat.completions.create(model="fake-chat", messages=USER).choices  # cached (TTL 600 s)
    assert datetime.now(UTC) < at, "the machine was too slow to use the key before it expired"
    time.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()) + 0.2)  # waits for the clock, asserts nothing
    with pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.create(model="fake-chat", messages=USER)
    assert refused.value.status_code == 401 and refused.value.code == "key_expired"
    assert refused.value.response.json()["error"]["type"] == "authentication_error"


def test_an_expired_key_is_refused_everywhere(served: tuple[str, str, str]) -> None:
    base, url, _ = served
    _, key = _key(url, "old-admin", admin=True, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with _client(base, key) as client:
        with pytest.raises(openai.AuthenticationError) as models:
            client.models.list()
        assert models.value.code == "key_expired"
        with pytest.raises(openai.AuthenticationError) as batches:
            client.batches.list()
        assert batches.value.code == "key_expired"
    auth = {"authorization": f"Bearer {key}"}
    for path in ("/admin/keys", "/v1/margin/usage", "/dashboard/api/overview"):
        answer = httpx.get(base + path, headers=auth)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "key_expired", path
    login = httpx.post(
        f"{base}/dashboard/login",
        content=f"key={key}",
        headers={"content-type": "application/x-www-form-urlencoded", "origin": base},
    )
    assert login.status_code == 401 and "set-cookie" not in login.headers and "expired" in login.text


def test_the_admin_api_sets_shows_and_bounds_expiry(served: tuple[str, str, str]) -> None:
    base, _, admin = served
    auth = {"authorization": f"Bearer {admin}"}
    made = httpx.post(f"{base}/admin/keys", json={"name": "a", "expires_in_s": 3600}, headers=auth)
    assert made.status_code == 201, made.text
    expires = datetime.fromisoformat(made.json()["expires_at"])
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)
    at = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    dated = httpx.post(f"{base}/admin/keys", json={"name": "b", "expires_at": at}, headers=auth)
    assert dated.status_code == 201 and datetime.fromisoformat(dated.json()["expires_at"]) == datetime.fromisoformat(at)
    with _client(base, made.json()["key"]) as client:
        assert client.models.list().data  # a key not yet expired works
    listed = {k["name"]: k for k in httpx.get(f"{base}/admin/keys", headers=auth).json()["data"]}
    assert listed["a"]["expires_at"] == made.json()["expires_at"] and listed["a"]["state"] == "active"
    assert listed["root"]["expires_at"] is None and listed["root"]["state"] == "active"
    far = (datetime.now(UTC) + timedelta(days=3700)).isoformat()
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    for bad in (
        {"expires_in_s": 5},
        {"expires_in_s": 11 * 365 * 86_400},
        {"expires_at": far},
        {"expires_at": past},
        {"expires_at": "2030-01-01T00:00:00"},  # no zone: ambiguous
        {"expires_at": "soon"},
        {"expires_at": at, "expires_in_s": 3600},
    ):
        refused = httpx.post(f"{base}/admin/keys", json={"name": "x", **bad}, headers=auth)
        assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error", bad


def test_expired_keys_are_listed_as_expired(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    db.upgrade(url)
    _key(url, "gone", expires_at=datetime.now(UTC) - timedelta(minutes=1))
    engine = db.make_sync_engine(url)
    try:
        (record,) = keys.list_keys(engine)
    finally:
        engine.dispose()
    assert record.public()["state"] == "expired" and record.expires_at is not None
    assert record.expires_at.tzinfo is not None  # SQLite's naive value read back as UTC
