"""`margin serve --workers N`: the shared state its workers get (the 1,000-request budget test against two
workers is in tests/governance/test_replicas.py)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from redis import asyncio as aioredis

from margin.config import parse_settings
from margin.workers import PROMETHEUS_DIR, SESSION_SECRET, embedded_redis, metrics_dir, shared_state


def test_an_embedded_redis_on_a_private_socket_that_goes_away_with_it() -> None:
    with embedded_redis() as url:
        socket = Path(url.removeprefix("unix://"))
        assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700  # only this user reaches it

        async def ping() -> bool:
            client = aioredis.from_url(url)
            try:
                return bool(await client.ping())
            finally:
                await client.aclose()

        assert asyncio.run(ping())
    assert not socket.exists()


def test_workers_share_the_configured_redis_or_an_embedded_one() -> None:
    configured = parse_settings({"server": {"workers": 2}, "storage": {"redis": "redis://10.0.0.1:6379/0"}})
    with shared_state(configured) as shared:
        assert shared.storage.redis == "redis://10.0.0.1:6379/0"
    alone = parse_settings({})
    with shared_state(alone) as shared:
        assert shared.storage.redis is None  # one process keeps its in-process stores
    with shared_state(parse_settings({"server": {"workers": 2}})) as shared:
        assert shared.storage.redis is not None and shared.storage.redis.startswith("unix://")
        # one dashboard session secret for every worker (a login in one is valid in the others)
        assert shared.server.session_secret_env == SESSION_SECRET and len(os.environ[SESSION_SECRET]) == 64
    assert alone.server.session_secret_env is None


def test_a_metrics_folder_for_the_workers_unless_one_is_set(tmp_path: Path) -> None:
    before = os.environ.pop(PROMETHEUS_DIR, None)
    try:
        with metrics_dir():
            folder = Path(os.environ[PROMETHEUS_DIR])
            assert folder.is_dir()
        assert not folder.exists() and PROMETHEUS_DIR not in os.environ
        os.environ[PROMETHEUS_DIR] = str(tmp_path)
        with metrics_dir():
            assert os.environ[PROMETHEUS_DIR] == str(tmp_path)
    finally:
        os.environ.pop(PROMETHEUS_DIR, None)
        if before is not None:
            os.environ[PROMETHEUS_DIR] = before
