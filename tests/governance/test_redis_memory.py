"""At start, a configured Redis (storage.redis) must not be able to evict budget counters: a `maxmemory-policy`
other than noeviction refuses the start (a dropped counter reads as nothing spent), no `maxmemory` is warned
about (it grows without bound), and a server that does not allow CONFIG GET is logged as unchecked and the
start goes on. Real redis-servers of this module's own (the session's is shared: its CONFIG stays as it is)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from margin.errors import ConfigError
from margin.governance.redis_store import EMBEDDED_ENV, RedisStore
from margin.governance.service import make_store
from tests.helpers import fake_settings, free_port, gateway
from tests.servers import redis_server

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    with redis_server(free_port(), tmp_path) as url:
        yield url


def configure(url: str, **values: str) -> None:
    with redis.Redis.from_url(url) as client:
        for name, value in values.items():
            client.config_set(name.replace("_", "-"), value)


async def check(url: str) -> None:
    store = RedisStore(url)
    try:
        await store.check_memory()
    finally:
        await store.close()


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl", "allkeys-random", "volatile-lfu"])
async def test_a_policy_that_can_evict_budget_counters_refuses_the_start(own_redis: str, policy: str) -> None:
    configure(own_redis, maxmemory="64mb", maxmemory_policy=policy)
    with pytest.raises(ConfigError, match=f"maxmemory-policy is '{policy}'.*noeviction"):
        await check(own_redis)


async def test_the_gateway_does_not_start_on_an_evicting_redis(
    own_redis: str, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    configure(own_redis, maxmemory="64mb", maxmemory_policy="allkeys-lru")
    with pytest.raises(ConfigError, match="allkeys-lru"):
        async with gateway(fake_settings(db_path, storage={"redis": own_redis})):
            pass


async def test_no_maxmemory_is_warned_about_and_a_bound_is_not(
    own_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    configure(own_redis, maxmemory="0", maxmemory_policy="noeviction")
    with caplog.at_level(logging.INFO, logger="margin.governance"):
        await check(own_redis)
    assert [r.levelno for r in caplog.records if "no maxmemory" in r.getMessage()] == [logging.WARNING]
    caplog.clear()
    configure(own_redis, maxmemory="64mb")
    with caplog.at_level(logging.INFO, logger="margin.governance"):
        await check(own_redis)
    assert caplog.records == []


async def test_a_server_without_config_is_logged_and_the_start_goes_on(
    tmp_path: Path, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    with redis_server(port, tmp_path) as url:  # an ACL user that may not run CONFIG, as managed services have
        with redis.Redis.from_url(url) as admin:
            admin.acl_setuser("margin", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                              commands=["+@all", "-config"])  # fmt: skip
        limited = f"redis://margin:pw@127.0.0.1:{port}/0"
        with caplog.at_level(logging.INFO, logger="margin.governance"):
            await check(limited)
            async with gateway(fake_settings(db_path, storage={"redis": limited})) as gw:
                assert (await gw.http.get("/healthz")).status_code == 200
        said = [r for r in caplog.records if "CONFIG GET is not allowed" in r.getMessage()]
        assert len(said) == 2 and all(r.levelno == logging.WARNING for r in said)


async def test_a_url_that_looks_like_the_embedded_one_is_checked(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only margin's own redis-server, named by the supervisor that started it, skips the check: a configured
    URL holding its folder's prefix (Helm's `margin-redis-master`; here, a password) was taken for it and never
    checked."""
    with redis_server(free_port(), tmp_path, password="margin-redis-master") as url:
        configure(url, maxmemory="64mb", maxmemory_policy="allkeys-lru")
        with pytest.raises(ConfigError, match="allkeys-lru"):
            await check(url)
        for named, checked in ((url, False), ("unix:///elsewhere/redis.sock", True)):
            monkeypatch.setenv(EMBEDDED_ENV, named)  # as the supervisor sets it for its workers
            store = make_store(fake_settings(db_path, storage={"redis": url}))
            assert isinstance(store, RedisStore)
            try:
                with pytest.raises(ConfigError, match="allkeys-lru") if checked else contextlib.nullcontext():
                    await store.check_memory()
            finally:
                await store.close()
