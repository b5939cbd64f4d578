"""Key rotation against a running `margin serve` over real HTTP (the `openai` SDK as client for inference): a new
secret for the same key id, the old one accepted for a grace period and refused with 401 `key_rotated` after it,
at most two secrets at a time, the key's budget and ledger rows shared by both, revocation ending every secret,
dashboard sessions ending with the secret that made them. Before, `POST /admin/keys/{id}/rotate` did not exist
(404) and the only way to a new secret was a new key (a new id: budgets, limits and reports started again)."""

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
from tests.governance.conftest import served_with_admin
from tests.helpers import margin_serve

CONFIG = {
    "server": {"key_cache_ttl_s": 600},  # a key found stays cached for the whole test: rotation must not wait on it
    "backends": {"fake": {"kind": "fake", "output_tokens": 3}},
    "models": {"fake-chat": {"backend": "fake"}},
}
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(gateway URL, database URL, an admin key's auth header)."""
    with served_with_admin(tmp_path, CONFIG) as gateway:
        yield gateway


def _create(base: str, admin: dict[str, str], **fields: Any) -> dict[str, Any]:
    made = httpx.post(f"{base}/admin/keys", json={"name": "svc", "team": "search", **fields}, headers=admin)
    assert made.status_code == 201, made.text
    return dict(made.json())


def _rotate(base: str, admin: dict[str, str], key_id: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{base}/admin/keys/{key_id}/rotate", json=body, headers=admin)


def _chat(base: str, key: str) -> Any:
    with openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0) as client:
        return client.chat.completions.create(model="fake-chat", messages=USER, max_tokens=3)


def _refused(base: str, key: str) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as refused:
        _chat(base, key)
    return refused.value


def _login(browser: httpx.Client, key: str) -> None:
    """A browser's dashboard session, made with `key` (the cookie holds the session, never the key)."""
    base = str(browser.base_url).rstrip("/")
    answer = browser.post("/dashboard/login", content=f"key={key}", headers={**FORM, "origin": base})
    assert answer.status_code == 303 and "set-cookie" in answer.headers, answer.text
    assert browser.get("/dashboard/api/overview").status_code == 200


def test_rotation_keeps_the_id_the_budget_and_the_ledger(served: tuple[str, str, dict[str, str]]) -> None:
    base, _, admin = served
    made = _create(base, admin, tags={"feature": "qa"}, policy={"pii": "redact"})
    key_id, old = made["id"], made["key"]
    budget = {"name": "svc-cap", "scope": {"kind": "key", "value": key_id}, "tokens": 200, "period": "day"}
    assert httpx.put(f"{base}/admin/budgets", json=budget, headers=admin).status_code == 200
    assert _chat(base, old).choices  # the old secret is cached as the key's current one
    rotated = _rotate(base, admin, key_id, grace_s=3600)
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    new = body["key"]
    assert new.startswith(f"mgn_{key_id}_") and new != old and keys.well_formed(new)
    assert body["id"] == key_id and body["tags"] == {"feature": "qa"} and body["policy"] == {"pii": "redact"}
    assert body["team"] == "search" and body["state"] == "active" and body["expires_at"] is None
    until = datetime.fromisoformat(body["valid_until"])
    assert until == datetime.fromisoformat(body["previous_valid_until"]) > datetime.fromisoformat(body["rotated_at"])
    assert timedelta(minutes=59) < until - datetime.now(UTC) <= timedelta(hours=1)
    assert _chat(base, old).choices and _chat(base, new).choices  # both secrets work in the grace period
    own = [httpx.get(f"{base}/v1/margin/usage", headers={"authorization": f"Bearer {k}"}).json() for k in (old, new)]
    assert own[0]["key"]["id"] == own[1]["key"]["id"] == key_id  # one key: the same usage through either secret
    served_ = 3 + _spend_until_refused(base, old, new)
    used = _usage_of(base, admin, key_id, served_)
    spent = {b["name"]: b["spent"] for b in httpx.get(f"{base}/admin/budgets", headers=admin).json()["data"]}
    assert spent["svc-cap"] == used["input_tokens"] + used["output_tokens"]  # one budget: both secrets' spend


def _spend_until_refused(base: str, old: str, new: str) -> int:
    """Alternate the two secrets until the key's budget refuses: then both are refused (one budget). Returns
    how many were served."""
    for turn in range(30):
        try:
            _chat(base, (old, new)[turn % 2])
        except openai.RateLimitError:
            assert turn >= 2, "the budget refused before both secrets had spent from it"
            break
    else:
        pytest.fail("the per-key budget never refused")
    for key in (old, new):
        refused = _refused(base, key)
        assert refused.status_code == 429 and refused.code == "budget_exceeded", refused.response.text
    return turn


def _usage_of(base: str, admin: dict[str, str], key_id: str, served: int) -> dict[str, Any]:
    """The key's row in `/admin/usage?by=key` once the ledger has every request served (written after the
    answer; polled with a deadline)."""
    deadline = time.monotonic() + 30
    while True:
        groups = httpx.get(f"{base}/admin/usage?by=key", headers=admin).json()["groups"]
        mine = [g for g in groups if g["key"] == key_id]
        if (mine and mine[0]["requests"] - mine[0]["errors"] >= served) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [g["key"] for g in groups] == [key_id], groups  # every request of both secrets: the one key id
    assert mine[0]["requests"] - mine[0]["errors"] == served, groups
    return dict(mine[0])


def test_grace_zero_ends_the_old_secret_and_its_sessions_at_once(served: tuple[str, str, dict[str, str]]) -> None:
    base, _, admin = served
    made = _create(base, admin)
    assert _chat(base, made["key"]).choices  # cached (TTL 600 s)
    with httpx.Client(base_url=base) as browser, httpx.Client(base_url=base) as later:
        _login(browser, made["key"])
        rotated = _rotate(base, admin, made["id"], grace_s=0)
        assert rotated.status_code == 200 and rotated.json()["valid_until"] == rotated.json()["rotated_at"]
        refused = _refused(base, made["key"])
        assert refused.status_code == 401 and refused.code == "key_rotated", refused.response.text
        assert _chat(base, rotated.json()["key"]).choices
        assert browser.get("/dashboard/api/overview").status_code == 401  # the leaked secret's session ended
        _login(later, rotated.json()["key"])  # the new secret logs in


def test_the_old_secret_ends_with_its_grace_even_while_cached(served: tuple[str, str, dict[str, str]]) -> None:
    base, _, admin = served
    made = _create(base, admin)
    with httpx.Client(base_url=base) as browser:
        _login(browser, made["key"])
        rotated = _rotate(base, admin, made["id"], grace_s=3)
        assert rotated.status_code == 200, rotated.text
        until = datetime.fromisoformat(rotated.json()["valid_until"])
        assert _chat(base, made["key"]).choices  # in its grace: found by the old secret, now cached (TTL 600 s)
        assert browser.get("/dashboard/api/overview").status_code == 200  # its session lives as long
        assert datetime.now(UTC) < until, "the machine was too slow to use the old secret in its grace"
        time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.2)  # waits for the clock only
        refused = _refused(base, made["key"])
        assert refused.status_code == 401 and refused.code == "key_rotated" and "rotated" in str(refused.message)
        assert browser.get("/dashboard/api/overview").status_code == 401
    assert _chat(base, rotated.json()["key"]).choices  # the new secret goes on


def test_a_second_rotation_ends_the_first_secret(served: tuple[str, str, dict[str, str]]) -> None:
    base, _, admin = served
    made = _create(base, admin)
    first = made["key"]
    second = _rotate(base, admin, made["id"], grace_s=3600).json()["key"]
    assert _chat(base, first).choices and _chat(base, second).choices
    third = _rotate(base, admin, made["id"], grace_s=3600).json()["key"]
    refused = _refused(base, first)  # at most two secrets: the oldest ends at once
    assert refused.status_code == 401 and refused.code == "invalid_api_key", refused.response.text
    assert _chat(base, second).choices and _chat(base, third).choices
    (listed,) = [k for k in httpx.get(f"{base}/admin/keys", headers=admin).json()["data"] if k["id"] == made["id"]]
    assert listed["rotated_at"] and listed["previous_valid_until"] and listed["state"] == "active"
    shown = str(listed)
    # the secret is what follows `mgn_<id>_` (it may hold `_` itself: its last piece alone could be one character)
    assert not any(secret.split("_", 2)[2] in shown for secret in (first, second, third)) and "hash" not in shown


def test_revoking_a_rotated_key_ends_every_secret(served: tuple[str, str, dict[str, str]]) -> None:
    base, _, admin = served
    made = _create(base, admin)
    new = _rotate(base, admin, made["id"], grace_s=3600).json()["key"]
    assert _chat(base, made["key"]).choices and _chat(base, new).choices
    assert httpx.delete(f"{base}/admin/keys/{made['id']}", headers=admin).status_code == 200
    for key in (made["key"], new):
        assert _refused(base, key).status_code == 401


def test_who_may_rotate_what(served: tuple[str, str, dict[str, str]]) -> None:
    base, url, admin = served
    made = _create(base, admin)
    own = {"authorization": f"Bearer {made['key']}"}
    for target in (made["id"], "ffffffff"):  # not even itself
        denied = _rotate(base, own, target, grace_s=0)
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "permission_denied"
    assert _chat(base, made["key"]).choices  # the refused rotation changed nothing
    assert _rotate(base, admin, "0123abcd").status_code == 404
    gone = _create(base, admin, name="gone")
    assert httpx.delete(f"{base}/admin/keys/{gone['id']}", headers=admin).status_code == 200
    revoked = _rotate(base, admin, gone["id"])
    assert revoked.status_code == 409 and "revoked" in revoked.json()["error"]["message"]
    engine = db.make_sync_engine(url)  # an expired key: straight into the database (the API refuses the past)
    try:
        past = datetime.now(UTC) - timedelta(seconds=1)
        old, _ = keys.create_key(engine, keys.NewKey("old", expires_at=past))
    finally:
        engine.dispose()
    expired = _rotate(base, admin, old.id)
    assert expired.status_code == 409 and "expired" in expired.json()["error"]["message"]
    for bad in ({"grace_s": -1}, {"grace_s": 31 * 86_400}, {"grace_s": "1h"}, {"grace_s": True}, {"grace": 5}):
        refused = _rotate(base, admin, made["id"], **bad)
        assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error", bad
    empty = {**admin, "content-type": "application/json"}
    default = httpx.post(f"{base}/admin/keys/{made['id']}/rotate", headers=empty)  # no body: a day's grace
    assert default.status_code == 200, default.text
    left = datetime.fromisoformat(default.json()["valid_until"]) - datetime.now(UTC)
    assert timedelta(hours=23, minutes=59) < left <= timedelta(hours=24)
    root = next(k for k in httpx.get(f"{base}/admin/keys", headers=admin).json()["data"] if k["admin"])
    last = _rotate(base, admin, root["id"], grace_s=0)  # the last admin key: rotation revokes nothing
    assert last.status_code == 200, last.text
    assert httpx.get(f"{base}/admin/keys", headers={"authorization": f"Bearer {last.json()['key']}"}).status_code == 200
    assert httpx.get(f"{base}/admin/keys", headers=admin).status_code == 401


def test_a_rotation_elsewhere_is_seen_within_the_cache_ttl(tmp_path: Path) -> None:
    """`margin keys rotate --grace 0` on another machine: the running gateway refuses the old secret within
    `server.key_cache_ttl_s` (polled with a deadline) and takes the new one at once, though it was asked for
    the key's id with another secret before (that token's not-found entry is its own, not the key's)."""
    from typer.testing import CliRunner

    from margin.cli import app

    url = f"sqlite:///{tmp_path / 'c.db'}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    try:
        record, old = keys.create_key(engine, keys.NewKey("svc"))
    finally:
        engine.dispose()
    config = tmp_path / "margin.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "server": {"key_cache_ttl_s": 1}, "storage": {"ledger": url}}))
    with margin_serve(None, tmp_path / "serve.log", config) as (base, _):
        assert _chat(base, old).choices  # cached as the key's current secret
        guessed = f"mgn_{record.id}_{'x' * 32}"
        assert _refused(base, guessed).status_code == 401  # cached as not found
        rotated = CliRunner().invoke(app, ["keys", "rotate", record.id, "--grace", "0", "--config", str(config)])
        assert rotated.exit_code == 0, rotated.output
        new = next(line for line in rotated.output.splitlines() if line.startswith("mgn_"))
        assert new.startswith(f"mgn_{record.id}_") and "no longer works" in rotated.output
        assert _chat(base, new).choices  # at once: never refused from the not-found cache
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                _chat(base, old)
            except openai.AuthenticationError as exc:
                assert exc.code == "key_rotated"
                break
            time.sleep(0.2)
        else:
            pytest.fail("the old secret was still accepted 30 s after a rotation with grace 0 (TTL 1 s)")
        assert _chat(base, new).choices
