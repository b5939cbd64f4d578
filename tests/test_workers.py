"""`margin serve --workers N`: the shared state its workers get (the 1,000-request budget test against two
workers is in tests/governance/test_replicas.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from redis import asyncio as aioredis

from margin.config import parse_settings
from margin.workers import (
    MIN_CACHE_BYTES,
    PROMETHEUS_DIR,
    SESSION_SECRET,
    _answers,
    embedded_redis,
    metrics_dir,
    shared_state,
)
from tests.helpers import child_pids, ledger_rows, margin_serve, polls, wait_ledger_row


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


def test_an_embedded_redis_is_ready_when_it_answers_not_when_its_socket_file_appears() -> None:
    """redis-server makes the socket file at bind(), before it listens: a worker that connected then got
    'connection refused' (seen once under load). Readiness is a PING answered."""
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "redis.sock"
        assert not _answers(path)  # no file yet
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
            bound.bind(str(path))  # the file exists, nothing listens
            assert path.exists() and not _answers(path)
    with embedded_redis() as url:
        assert _answers(Path(url.removeprefix("unix://")))


@pytest.mark.usefixtures("restored_environ")  # the session secret is set in this process's environment
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
        for name in ("counter_123.db", "gauge_livesum_7.db", "histogram_9.db"):
            (tmp_path / name).write_bytes(b"an earlier run's")
        (tmp_path / "notes.txt").write_text("the operator's")
        (tmp_path / "margin.db").write_bytes(b"SQLite format 3\x00")  # a ledger beside them: before, deleted
        with metrics_dir():
            assert os.environ[PROMETHEUS_DIR] == str(tmp_path)
            assert sorted(p.name for p in tmp_path.iterdir()) == ["margin.db", "notes.txt"]  # prometheus-client's only
    finally:
        os.environ.pop(PROMETHEUS_DIR, None)
        if before is not None:
            os.environ[PROMETHEUS_DIR] = before


@pytest.mark.usefixtures("restored_environ")  # the session secret is set in this process's environment
def test_the_exact_cache_gets_an_embedded_redis_of_its_own_bounded_by_max_bytes() -> None:
    """With workers and no Redis configured, the cache's entries used to share the governance store's embedded
    Redis, which had no memory bound: any caller's deterministic answers stayed in RAM for `cache.ttl_s`. They
    get a redis-server of their own, at `cache.max_bytes` (8 MiB at least), evicting the least recently used;
    the governance store has no eviction at all (it must never drop a reservation)."""
    from redis import Redis

    settings = parse_settings({"server": {"workers": 2}, "cache": {"max_bytes": 4 * 1024 * 1024}})
    with shared_state(settings) as shared:
        assert shared.cache.redis is not None and shared.storage.redis is not None
        assert shared.cache.redis != shared.storage.redis
        cache = Redis.from_url(shared.cache.redis)
        governance = Redis.from_url(shared.storage.redis)
        try:
            assert cache.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
            limit = int(str(cache.config_get("maxmemory")["maxmemory"]))
            assert limit == MIN_CACHE_BYTES
            assert int(str(governance.config_get("maxmemory")["maxmemory"])) == 0
            value = b"x" * 32 * 1024
            for i in range(1000):  # 32 MiB of answers: every write succeeds, the oldest go
                cache.set(f"mgn:x:{i}", value, ex=3600)
            assert int(cache.info("memory")["used_memory"]) <= limit
            assert cache.dbsize() < 1000 and cache.get("mgn:x:999") == value
        finally:
            cache.close()
            governance.close()


async def test_a_cache_whose_redis_fails_is_a_miss_not_an_error() -> None:
    from margin.cache.exact import Entry, RedisCache

    cache = RedisCache("redis://127.0.0.1:1/0")  # nothing listens there
    try:
        assert await cache.get("k") is None
        await cache.put("k", Entry("text", "stop", 1, 1, 0, "m", 0.0), 60)
    finally:
        await cache.close()


def _tree(pid: int) -> list[int]:
    """`pid` and every process under it."""
    return [pid, *(p for child in child_pids(pid) for p in _tree(child))]


JSON = {"content-type": "application/json"}
STOPS: list[tuple[list[str], str]] = [(["--workers", "2"], "ctrl-c"), (["--workers", "2"], "systemd"), ([], "systemd")]


@pytest.mark.parametrize(("extra", "stop"), STOPS, ids=["workers-ctrl-c", "workers-systemd", "one-process-systemd"])
def test_a_stop_signalled_to_every_process_at_once_is_still_a_clean_shutdown(
    tmp_path: Path, extra: list[str], stop: str
) -> None:
    """A stop signalled to every process of the gateway at once: a terminal's Ctrl-C (SIGINT to the process
    group) or systemd's default stop (SIGTERM to every process of the unit's cgroup). The embedded redis-servers
    of `--workers N` quit at once, while the workers were still finishing what they had in flight: a request
    whose body was still arriving was refused 503 `governance_unavailable`, every answer in flight failed to
    settle. The ledger-ingest child of each gateway process quit too: the clean shutdown left the rows it had
    acknowledged in the outbox, not in the ledger. Both now leave the stop to their parent."""
    config = {
        "backends": {"api": {"kind": "fake", "output_tokens": 2}},
        "models": {"priced": {"backend": "api", "price": {"input": "0", "output": "2", "version": "t"}}},
        "budgets": [{"name": "all", "scope": {"kind": "global"}, "usd": "100", "period": "lifetime"}],
    }
    path, db, log = tmp_path / "margin.yaml", tmp_path / "ledger.db", tmp_path / "serve.log"
    path.write_text(yaml.safe_dump(config))
    body = orjson.dumps({"model": "priced", "messages": [{"role": "user", "content": "hi"}]})
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    with margin_serve(db, log, path, extra, ready_s=60, group=True) as (url, process):
        port = int(url.rsplit(":", 1)[1])
        for _ in range(4):  # rows through each worker: every ingest child has started and moved one
            first = httpx.post(f"{url}/v1/chat/completions", content=body, headers=JSON, timeout=30)
            assert first.status_code == 200, first.text
            wait_ledger_row(db, url, first.headers["x-request-id"])
        everyone = _tree(process.pid)
        # the supervisor, 2 workers, 2 redis-servers, 2 ingest children (and multiprocessing's resource tracker)
        assert len(everyone) >= (7 if extra else 2), everyone
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(head + b"content-length: %d\r\n\r\n" % len(body) + body[:10])
            time.sleep(2.0)  # the gateway has the request's head (a loaded 2-core machine: seconds, not 0.5)
            if stop == "ctrl-c":
                os.killpg(process.pid, signal.SIGINT)
            for pid in everyone if stop == "systemd" else []:
                os.kill(pid, signal.SIGTERM)
            time.sleep(1.0)  # a process that quits at the signal has quit by now
            client.sendall(body[10:])
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
        process.wait(timeout=60)
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 200 OK", answer
    request_id = next(line for line in rest.split(b"\r\n") if line.startswith(b"x-request-id: "))[14:]
    assert ledger_rows(db, request_id.decode()) == 1  # answered and, once stopped, in the ledger
    assert b"store is unavailable" not in log.read_bytes() and b"settle failed" not in log.read_bytes()


def test_an_embedded_redis_that_dies_is_started_again_and_the_budget_still_holds(tmp_path: Path) -> None:
    """`--workers 2`, no Redis configured: both embedded redis-servers killed (`kill -9`, as the OOM killer
    would). Nothing started them again: every budgeted request was refused 503 `governance_unavailable` until
    the gateway was restarted, while /readyz said ready. The supervisor now starts a dead one again on its
    socket, and the budget's counter is rebuilt from the ledger: what was spent before still counts."""
    config = {
        "storage": {"flush_interval_ms": 10},
        "backends": {"api": {"kind": "fake", "output_tokens": 4}},
        "models": {"priced": {"backend": "api", "price": {"input": "0", "output": "2500", "version": "t"}}},
        "budgets": [{"name": "ten", "scope": {"kind": "global"}, "usd": "0.10", "period": "lifetime"}],
    }
    path, db = tmp_path / "margin.yaml", tmp_path / "ledger.db"
    path.write_text(yaml.safe_dump(config))
    body = {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}  # $0.01 each

    def post() -> httpx.Response:
        with httpx.Client(base_url=url, timeout=30) as client:  # a new connection: either worker
            return client.post("/v1/chat/completions", json=body)

    def status() -> int:
        return post().status_code

    with margin_serve(db, tmp_path / "serve.log", path, ["--workers", "2"], ready_s=60) as (url, process):
        before = [post() for _ in range(4)]
        assert [answer.status_code for answer in before] == [200] * 4
        for answer in before:  # their rows reach the ledger (the counter is rebuilt from it)
            wait_ledger_row(db, url, answer.headers["x-request-id"])
        servers = [
            pid for pid in child_pids(process.pid) if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(servers) == 2  # the budgets' and the cache's
        for pid in servers:
            os.kill(pid, signal.SIGKILL)
        seen: list[int] = []
        for _ in polls(30):
            seen.append(status())
            if seen[-1] == 429 or seen.count(200) > 6:
                break
            time.sleep(0.1)
    assert seen[-1] == 429 and seen.count(200) == 6, seen  # $0.10: four before, six after, then refused
    assert set(seen) <= {200, 429, 503}
