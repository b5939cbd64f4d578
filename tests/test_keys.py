"""KeyCache: expiry refreshes with one query however many requests arrive meanwhile."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

import pytest

from margin.errors import InvalidRequest, Overloaded
from margin.keycache import KeyCache
from margin.keys import KeyRequest, new_key


class _Result:
    def __init__(self, value: Any) -> None:
        self.value = value

    def scalar_one(self) -> Any:
        return self.value

    def first(self) -> Any:
        return None  # no such key


class _Connection:
    def __init__(self, engine: _SlowEngine) -> None:
        self.engine = engine

    async def __aenter__(self) -> _Connection:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        return None

    async def execute(self, query: Any) -> _Result:
        self.engine.queries += 1
        await asyncio.sleep(0.02)
        if self.engine.fail:
            raise RuntimeError("database down")
        if self.engine.down:
            raise ConnectionRefusedError(111, "Connection refused")
        return _Result(self.engine.count)


class _SlowEngine:
    """An AsyncEngine stand-in whose queries take 20 ms and are counted."""

    def __init__(self, count: int = 0) -> None:
        self.count = count
        self.queries = 0
        self.fail = False
        self.down = False  # unreachable, as asyncpg reports it

    def connect(self) -> _Connection:
        return _Connection(self)


async def test_concurrent_requests_share_one_refresh() -> None:
    engine = _SlowEngine(count=3)
    cache = KeyCache(engine, ttl_s=60)
    assert await asyncio.gather(*(cache.active_keys() for _ in range(50))) == [3] * 50
    assert engine.queries == 1
    assert await cache.active_keys() == 3  # cached now
    assert engine.queries == 1
    cache.forget()
    engine.count = 2
    assert await asyncio.gather(*(cache.active_keys() for _ in range(10))) == [2] * 10
    assert engine.queries == 2


async def test_concurrent_lookups_of_one_key_share_one_query() -> None:
    engine = _SlowEngine()
    cache = KeyCache(engine, ttl_s=60)
    (_, x), (_, y) = new_key(), new_key()
    found = await asyncio.gather(*(cache.lookup(x) for _ in range(20)), cache.lookup(y))
    assert found == [None] * 21
    assert engine.queries == 2  # one per distinct key
    assert await cache.lookup(x) is None and engine.queries == 2  # a key not found is cached too


async def test_malformed_keys_never_reach_the_database() -> None:
    engine = _SlowEngine()
    cache = KeyCache(engine, ttl_s=60)
    _, good = new_key()
    for bad in ("mgn_x_y", "sk-" + "a" * 48, good + "x", good[:-1], good.replace("mgn_", "MGN_"), "", "x" * 5000):
        assert await cache.lookup(bad) is None
    assert engine.queries == 0 and cache.queries == 0


async def test_lookups_of_unseen_keys_are_bounded_in_flight() -> None:
    engine = _SlowEngine()
    cache = KeyCache(engine, ttl_s=60, max_lookups=3)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, 3 - cache._lookups._value)
            await asyncio.sleep(0.001)

    watcher = asyncio.ensure_future(watch())
    await asyncio.gather(*(cache.lookup(new_key()[1]) for _ in range(30)))
    watcher.cancel()
    assert engine.queries == 30 and peak == 3


async def test_a_failed_refresh_fails_its_waiters_and_the_next_request_retries() -> None:
    engine = _SlowEngine(count=1)
    engine.fail = True
    cache = KeyCache(engine, ttl_s=60)
    results = await asyncio.gather(*(cache.active_keys() for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert engine.queries == 1
    engine.fail = False
    assert await cache.active_keys() == 1
    assert engine.queries == 2


async def test_a_cancelled_waiter_does_not_cancel_the_refresh() -> None:
    engine = _SlowEngine(count=4)
    cache = KeyCache(engine, ttl_s=60)
    first = asyncio.ensure_future(cache.active_keys())
    await asyncio.sleep(0.005)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await cache.active_keys() == 4
    assert engine.queries == 1


# --- against a real database: open mode, the last admin key, the bounded caches ---------------------------


def _engines(url: str) -> tuple[Any, Any]:
    from margin.ledger import db

    db.upgrade(url)
    return db.make_sync_engine(url), db.make_async_engine(url)


def _revoke_every_key(sync: Any) -> None:
    from margin.ledger.models import api_keys

    with sync.begin() as connection:
        connection.execute(api_keys.delete())


async def _open_mode_is_decided_at_start(url: str) -> None:
    from margin.errors import ConfigError
    from margin.keys import NewKey, create_key, revoke_key

    sync, engine = _engines(url)
    _revoke_every_key(sync)
    try:
        cache = KeyCache(engine, ttl_s=0)
        assert await cache.start("127.0.0.1") is True and await cache.open_now()
        with pytest.raises(ConfigError, match="no API keys"):
            await KeyCache(engine, ttl_s=0).start("0.0.0.0")
        record, _ = create_key(sync, NewKey("first"))
        assert await cache.open_now() is False  # the first key closes an open gateway ...
        revoke_key(sync, record.id)
        assert await cache.open_now() is False and cache.open_mode is False  # ... for good
        closed = KeyCache(engine, ttl_s=0)
        create_key(sync, NewKey("second"))
        assert await closed.start("0.0.0.0") is False
        _revoke_every_key(sync)
        assert await closed.open_now() is False  # started with keys: never open, whatever is revoked
    finally:
        sync.dispose()
        await engine.dispose()


async def test_open_mode_is_decided_at_start_sqlite(tmp_path: Any) -> None:
    await _open_mode_is_decided_at_start(f"sqlite:///{tmp_path / 'keys.db'}")


async def test_open_mode_is_decided_at_start_postgres(postgres_url: str) -> None:
    await _open_mode_is_decided_at_start(postgres_url)


def _last_admin_key(url: str) -> None:
    from margin.errors import Conflict
    from margin.keys import NewKey, create_key, revoke_key
    from margin.ledger import db

    db.upgrade(url)
    sync = db.make_sync_engine(url)
    _revoke_every_key(sync)
    try:
        first, _ = create_key(sync, NewKey("root", is_admin=True))
        user, _ = create_key(sync, NewKey("user", team="a"))
        with pytest.raises(Conflict, match="last active admin key") as refused:
            revoke_key(sync, first.id)
        assert refused.value.code == "last_admin_key" and "margin keys create" in refused.value.message
        second, _ = create_key(sync, NewKey("root-2", is_admin=True))
        assert revoke_key(sync, first.id).revoked_at is not None  # rotated
        with pytest.raises(Conflict):
            revoke_key(sync, second.id)
        assert revoke_key(sync, user.id).revoked_at is not None  # non-admin keys go freely
        _expired_admins_do_not_count(sync, second.id)
    finally:
        sync.dispose()


def _expired_admins_do_not_count(sync: Any, last: str) -> None:
    """An expired admin key administers nothing: it is no successor (before, expiry did not exist)."""
    from datetime import UTC, datetime, timedelta

    from margin.errors import Conflict
    from margin.keys import NewKey, create_key, revoke_key

    past = datetime.now(UTC) - timedelta(seconds=1)
    create_key(sync, NewKey("root-old", is_admin=True, expires_at=past))
    with pytest.raises(Conflict, match="last active admin key"):
        revoke_key(sync, last)
    create_key(sync, NewKey("root-3", is_admin=True, expires_at=datetime.now(UTC) + timedelta(days=1)))
    assert revoke_key(sync, last).revoked_at is not None  # an unexpired one is


def test_the_last_admin_key_cannot_be_revoked_sqlite(tmp_path: Any) -> None:
    _last_admin_key(f"sqlite:///{tmp_path / 'keys.db'}")


def test_the_last_admin_key_cannot_be_revoked_postgres(postgres_url: str) -> None:
    _last_admin_key(postgres_url)


async def test_random_keys_fill_only_the_bounded_negative_cache(tmp_path: Any) -> None:
    from margin.keys import NewKey, create_key

    sync, engine = _engines(f"sqlite:///{tmp_path / 'keys.db'}")
    try:
        record, key = create_key(sync, NewKey("real"))
        cache = KeyCache(engine, ttl_s=60, max_entries=16)
        found = await cache.lookup(key)
        assert found is not None and found.id == record.id
        queries = cache.queries
        for _ in range(200):
            assert await cache.lookup(new_key()[1]) is None
        assert cache.queries == queries + 200
        assert len(cache._unknown.entries) == 16 and len(cache._found.entries) == 1
        again = await cache.lookup(key)
        assert again is not None and cache.queries == queries + 200  # still cached: not flushed by the flood
        by_id = await cache.lookup_id(record.id)
        assert by_id is not None and by_id.name == "real" and await cache.lookup_id("00000000") is None
    finally:
        sync.dispose()
        await engine.dispose()


async def test_a_lookup_read_before_a_revocation_is_not_cached_after_it(tmp_path: Any) -> None:
    """A key's lookup that read it as active before a revocation, and landed after `forget()`, cached the revoked
    key as active for `ttl_s`: two admins revoking each other at once left the revoked one answered 200 (CI saw it).
    Now such a lookup answers only the requests already waiting for it; the next lookup queries again."""
    from margin.keys import NewKey, create_key, revoke_key

    sync, engine = _engines(f"sqlite:///{tmp_path / 'keys.db'}")
    try:
        create_key(sync, NewKey("other", is_admin=True))
        record, key = create_key(sync, NewKey("victim", is_admin=True))
        cache = KeyCache(engine, ttl_s=60)
        read, release = asyncio.Event(), asyncio.Event()
        select = cache._select_hash

        async def held(digest: str) -> Any:
            found = await select(digest)
            read.set()
            await release.wait()  # the row was read as active; the revocation lands now
            return found

        cache._select_hash = held  # type: ignore[method-assign]
        early = asyncio.ensure_future(cache.lookup(key))
        await read.wait()
        revoke_key(sync, record.id)
        cache.forget()
        late = asyncio.ensure_future(cache.lookup(key))  # arrives after the revocation: not joined to the early read
        await asyncio.sleep(0.05)
        release.set()
        first = await early
        assert first is not None and first.id == record.id  # it was read before the revocation
        assert await late is None
        assert await cache.lookup(key) is None and await cache.lookup_id(record.id) is None
    finally:
        sync.dispose()
        await engine.dispose()


def test_the_every_team_marker_is_not_a_team(tmp_path: Any) -> None:
    """'*' is the rollups' rows across every team: a key of team '*' would be read as all of them."""
    from margin.errors import InvalidRequest
    from margin.keys import NewKey, create_key
    from margin.ledger import db

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    db.upgrade(url)
    sync = db.make_sync_engine(url)
    try:
        with pytest.raises(InvalidRequest, match="reserved"):
            create_key(sync, NewKey("star", team="*"))
        assert create_key(sync, NewKey("stars", team="**"))[0].team == "**"
    finally:
        sync.dispose()


async def test_an_unreachable_database_keeps_the_last_count_and_refuses_unseen_keys_with_503() -> None:
    """The count of active keys (open mode) goes on from the last one, asked again after a second; a key never
    seen cannot be checked: 503 `auth_unavailable` (was the connection error itself: a 500). Keys seen before
    are served as the database last said (tests/governance/test_replica_rules.py, against margin serve)."""
    engine = _SlowEngine(count=3)
    cache = KeyCache(engine, ttl_s=0)
    assert await cache.active_keys() == 3
    engine.down = True
    assert await cache.active_keys() == 3 and await cache.active_keys() == 3
    assert engine.queries == 2  # the second call within the second used the last count
    with pytest.raises(Overloaded) as refused:
        await cache.lookup(new_key()[1])
    assert refused.value.code == "auth_unavailable"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"expires_at": "2020-01-01T00:00:00+00:00"}, "expires_at"),
        ({"expires_in_s": 5}, "expires_in_s"),
        ({"expires_at": "2030-01-01T00:00:00+00:00", "expires_in_s": 3600}, None),
    ],
)
def test_a_bad_expiry_names_its_field_in_plain_words(fields: dict[str, Any], param: str | None) -> None:
    """The admin API's and the CLI's message: the field, then what is wrong (not pydantic's `Value error,`)."""
    with pytest.raises(InvalidRequest) as refused:
        KeyRequest.parse({"name": "x", **fields})
    assert refused.value.param == param
    assert "Value error" not in refused.value.message and refused.value.message.startswith(f"{param or 'body'}: ")


def test_dashboard_sessions_end_with_the_secret_that_made_them(tmp_path: Any) -> None:
    """A session issued before a rotation lives as long as the old secret's grace; a second rotation ends the
    first secret, and with it the sessions issued before the first rotation, at once (those issued between
    the two rotations were made with the second secret, which is in its grace now). Before, rotation did not
    exist."""
    from datetime import UTC, datetime, timedelta

    from margin.keyops import rotate_key
    from margin.keys import NewKey, create_key, list_keys, unix_ms
    from margin.ledger import db

    url = f"sqlite:///{tmp_path / 'sessions.db'}"
    db.upgrade(url)
    sync = db.make_sync_engine(url)
    try:
        record, _ = create_key(sync, NewKey("svc"))
        before = unix_ms(datetime.now(UTC)) - 1
        first, _ = rotate_key(sync, record.id, timedelta(hours=1))
        assert first.rotated_at is not None
        now = datetime.now(UTC)
        assert not first.session_ended(before, now)  # the old secret is in its grace: so is its session
        assert first.session_ended(before, now + timedelta(hours=2))  # ... and no longer after it
        between = unix_ms(first.rotated_at) + 1
        second, _ = rotate_key(sync, record.id, timedelta(hours=1))
        (listed,) = list_keys(sync)
        for seen in (second, listed):
            assert seen.session_ended(before, now) and not seen.session_ended(between, now)
        zero, _ = rotate_key(sync, record.id, timedelta(0))
        assert zero.session_ended(between, datetime.now(UTC)) and zero.previous_valid_until == zero.rotated_at
    finally:
        sync.dispose()


def _rotation_waits_for_a_revocation(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rotation begun while a revocation of the same key is being written (updated, not yet committed) waits
    for it, then answers 409 `key_revoked`. Before, on SQLite (where FOR UPDATE does nothing), the rotation read
    the key as active, its update waited for the revocation's commit and then went through: the key stayed
    revoked, and the caller was handed a new secret for it (200)."""
    import threading
    import time
    from datetime import timedelta

    from margin import keyops
    from margin.errors import Conflict
    from margin.keys import NewKey, create_key, revoke_key
    from margin.ledger import audit

    sync, engine = _engines(url)
    updated, go = threading.Event(), threading.Event()
    record = audit.record

    def slow_record(connection: Any, origin: audit.Origin, change: audit.Change) -> int:
        if change.action == "key.revoke":  # the key's row is updated, the transaction still open
            updated.set()
            go.wait(10)
        return record(connection, origin, change)

    monkeypatch.setattr(audit, "record", slow_record)
    outcome: dict[str, Any] = {}

    def rotate(key_id: str) -> None:
        try:
            outcome["rotated"] = keyops.rotate_key(sync, key_id, timedelta(0))
        except Conflict as exc:
            outcome["refused"] = exc

    try:
        _revoke_every_key(sync)
        key, _ = create_key(sync, NewKey("svc", team="a"))
        revoking = threading.Thread(target=revoke_key, args=(sync, key.id, audit.Origin("cli:test", "cli")))
        revoking.start()
        assert updated.wait(10)
        rotating = threading.Thread(target=rotate, args=(key.id,))
        rotating.start()
        time.sleep(0.5)  # the rotation reads the key (before: as active) and waits on the revocation's lock
        go.set()
        revoking.join(15)
        rotating.join(15)
        assert "rotated" not in outcome, "a new secret was handed out for a key revoked meanwhile"
        assert outcome["refused"].code == "key_revoked", outcome
    finally:
        go.set()
        sync.dispose()
        asyncio.run(engine.dispose())


def test_a_rotation_racing_a_revocation_is_refused_sqlite(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _rotation_waits_for_a_revocation(f"sqlite:///{tmp_path / 'keys.db'}", monkeypatch)


def test_a_rotation_racing_a_revocation_is_refused_postgres(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _rotation_waits_for_a_revocation(postgres_url, monkeypatch)
