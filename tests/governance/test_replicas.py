"""Two gateway processes sharing a real Redis and one ledger (a SQLite file, or a real PostgreSQL): 1,000
concurrent requests against a $1.00 budget. Nothing is overspent, nothing hangs, every reservation is
settled, and the ledger agrees with the budget's counter to the nano-dollar. The same against one gateway
with two worker processes (`margin serve --workers 2`) and no Redis configured (the embedded one)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import aiohttp
import httpx
import pytest
import sqlalchemy as sa
import yaml
from redis import asyncio as aioredis

from margin.economics.money import to_nanousd
from margin.ledger import db
from margin.ledger.models import ledger
from tests.helpers import free_port, stop_gateway

pytestmark = pytest.mark.integration

REQUEST_COST = Decimal("0.01")  # 4 output tokens × $2,500 per million, no input price: known exactly


def config(tmp_path: Path, redis_url: str | None, ledger_url: str | None = None) -> Path:
    data = {
        "storage": {"ledger": ledger_url or f"sqlite:///{tmp_path / 'ledger.db'}", "redis": redis_url},
        "backends": {"api": {"kind": "fake", "output_tokens": 4, "ttft_ms": 5, "tokens_per_s": 1000}},
        "models": {"priced": {"backend": "api", "price": {"input": "0", "output": "2500", "version": "t"}}},
        "budgets": [{"name": "one-dollar", "scope": {"kind": "global"}, "usd": "1.00", "period": "lifetime"}],
        "server": {"log_level": "warning"},
    }
    path = tmp_path / "margin.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("gateway did not become healthy")


@contextmanager
def replicas(path: Path, n: int = 2, extra: tuple[str, ...] = ()) -> Iterator[list[str]]:
    """`margin serve` processes on free loopback ports; stopped with SIGTERM (a clean shutdown) on exit."""
    ports = [free_port() for _ in range(n)]
    logs = [(path.parent / f"gateway-{port}.log").open("wb") for port in ports]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "margin", "serve", "--config", str(path), "--port", str(port), *extra],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        for port, log in zip(ports, logs, strict=True)
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url, process in zip(urls, processes, strict=True):
            wait_healthy(url, process)
        yield urls
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            stop_gateway(process, signalled=True)  # kills one that hangs (the test fails, saying so)
        for log in logs:
            log.close()


async def fire(urls: list[str], n: int) -> Counter[int]:
    """n requests at once, alternating between replicas (aiohttp: httpx's pool slows down badly with
    hundreds of requests waiting for a connection)."""
    body = {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as client:

        async def one(i: int) -> int:
            async with client.post(f"{urls[i % len(urls)]}/v1/chat/completions", json=body) as response:
                payload = await response.json()
                if response.status == 429:
                    assert payload["error"]["code"] == "budget_exceeded"
                return response.status

        return Counter(await asyncio.gather(*(one(i) for i in range(n))))


async def redis_state(url: str) -> tuple[int, int, int]:
    client = aioredis.from_url(url, decode_responses=True)
    try:
        [name] = await client.keys("mgn:c:one-dollar~*@lifetime")
        spent, reserved = await client.hmget(name, "spent", "reserved")
        pending = await client.zcard("mgn:deadlines")
    finally:
        await client.aclose()
    return int(spent or 0), int(reserved or 0), int(pending)


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_two_replicas_never_overspend(
    tmp_path: Path, redis_url: str, database: str, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    if database == "postgres":
        url = request.getfixturevalue("postgres_url")
        db.downgrade(url, "base")  # an empty ledger for this run
    path = config(tmp_path, redis_url, url)
    asyncio.run(_flush(redis_url))
    db.upgrade(url)  # migrate once, before two processes start
    with replicas(path) as urls:
        statuses = asyncio.run(fire(urls, 1000))
    spent, reserved, pending = asyncio.run(redis_state(redis_url))  # after a clean shutdown of both
    assert sum(statuses.values()) == 1000 and set(statuses) <= {200, 429}  # every request answered
    assert statuses[200] == 100  # reservations equal actual costs here, so exactly $1.00 worth is admitted
    assert reserved == 0 and pending == 0  # every reservation settled
    engine = db.make_sync_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sa.select(ledger.c.request_id, ledger.c.status, ledger.c.cost_nanousd)).all()
    engine.dispose()
    assert len(rows) == 1000 and len({r.request_id for r in rows}) == 1000  # none lost, none doubled
    assert Counter(r.status for r in rows)["ok"] == statuses[200]
    ledger_total = sum(r.cost_nanousd or 0 for r in rows)
    assert ledger_total == spent  # the ledger and the budget counter agree exactly
    assert ledger_total <= to_nanousd(Decimal("1.00") + REQUEST_COST)


def test_one_gateway_with_two_workers_never_overspends(tmp_path: Path) -> None:
    """No storage.redis: the supervisor's embedded redis-server holds the budget for both workers."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    path = config(tmp_path, None, url)
    db.upgrade(url)
    with replicas(path, n=1, extra=("--workers", "2")) as urls:
        pids = worker_pids(urls[0])
        statuses = asyncio.run(fire(urls, 1000))
    assert len(pids) == 2  # two processes answered on the one port
    assert sum(statuses.values()) == 1000 and set(statuses) <= {200, 429}
    assert statuses[200] == 100  # exactly $1.00 worth admitted across both workers
    engine = db.make_sync_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sa.select(ledger.c.request_id, ledger.c.status, ledger.c.cost_nanousd)).all()
    engine.dispose()
    assert len(rows) == 1000 and len({r.request_id for r in rows}) == 1000
    assert Counter(r.status for r in rows)["ok"] == 100
    assert sum(r.cost_nanousd or 0 for r in rows) == to_nanousd(Decimal("1.00"))


def worker_pids(url: str, timeout_s: float = 60) -> set[int]:
    """The pids that answer /healthz on fresh connections (the kernel spreads them over the workers), until
    two did or `timeout_s` passed: the second worker may still be starting when the first answers (400 tries,
    ~2 s, were not always enough for it on a loaded box)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < 2 and time.monotonic() < deadline:
        with httpx.Client() as fresh:
            seen.add(int(fresh.get(f"{url}/healthz").json()["pid"]))
    return seen


async def _flush(url: str) -> None:
    client = aioredis.from_url(url)
    await client.flushdb()
    await client.aclose()


def test_sighup_reloads_flags_from_the_config_file(tmp_path: Path, redis_url: str) -> None:
    path = config(tmp_path, redis_url)
    asyncio.run(_flush(redis_url))
    body = {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with replicas(path, n=1) as urls:
        assert httpx.post(f"{urls[0]}/v1/chat/completions", json=body).status_code == 200
        data = yaml.safe_load(path.read_text())
        data["flags"] = [{"name": "off", "target": {"kind": "model", "value": "priced"}, "action": "disable"}]
        path.write_text(yaml.safe_dump(data))
        pid = int(httpx.get(f"{urls[0]}/healthz").json()["pid"])
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + 30  # was 100 tries (~5 s) for the reload on a loaded box
        while (response := httpx.post(f"{urls[0]}/v1/chat/completions", json=body)).status_code != 403:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert response.status_code == 403 and response.json()["error"]["code"] == "feature_disabled"


def _fresh_connections(url: str, n: int) -> tuple[Counter[int], set[int]]:
    """n requests, each on a new connection (either worker may take it): their statuses, and the workers seen."""
    body = {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    statuses: Counter[int] = Counter()
    workers: set[int] = set()
    for _ in range(n):
        with httpx.Client(base_url=url) as client:
            statuses[client.post("/v1/chat/completions", json=body).status_code] += 1
            workers.add(int(client.get("/healthz").json()["pid"]))  # the same connection: the same worker
    return statuses, workers


def _until(url: str, wanted: int, n: int = 20) -> tuple[Counter[int], set[int]]:
    deadline = time.monotonic() + 30
    while True:
        statuses, workers = _fresh_connections(url, n)
        if set(statuses) == {wanted} or time.monotonic() > deadline:
            return statuses, workers
        time.sleep(0.2)


def test_a_reload_reaches_every_worker_and_restarts_none(tmp_path: Path) -> None:
    """`--workers 2`, no Redis configured. SIGHUP to the supervisor used to make uvicorn replace both workers
    (streams cut after its graceful period) with workers built from the settings handed over at start: the
    edited file applied nowhere. `POST /admin/reload` reached only the worker that took it. Now the supervisor
    passes SIGHUP on, and a reload in one worker is announced to the others (the shared store)."""
    path = config(tmp_path, None)
    data = yaml.safe_load(path.read_text())
    data["budgets"][0]["usd"] = "1000"  # never the reason for a refusal here
    path.write_text(yaml.safe_dump(data))
    with replicas(path, n=1, extra=("--workers", "2")) as urls:
        url = urls[0]
        statuses, before = _until(url, 200)
        assert statuses == {200: 20} and len(before) == 2
        supervisor = int(Path(f"/proc/{min(before)}/stat").read_text().rsplit(")", 1)[1].split()[1])
        data["flags"] = [{"name": "off", "target": {"kind": "model", "value": "priced"}, "action": "disable"}]
        path.write_text(yaml.safe_dump(data))
        os.kill(supervisor, signal.SIGHUP)
        statuses, after = _until(url, 403)
        assert statuses == {403: 20} and after == before  # every worker has it; none was replaced
        data["flags"] = []
        path.write_text(yaml.safe_dump(data))
        with httpx.Client(base_url=url) as one:  # one worker takes the reload...
            assert one.post("/admin/reload", json={}).json()["config_file"] is True
        statuses, after = _until(url, 200)
        assert statuses == {200: 20} and after == before  # ...and the other follows


def test_a_login_made_in_one_worker_holds_in_the_others(tmp_path: Path) -> None:
    """`--workers 2` with no `server.session_secret_env`: each worker signed sessions with its own random secret,
    so a dashboard login worked on about half of the connections. The supervisor hands one secret to all."""
    path = config(tmp_path, None)
    made = subprocess.run(
        [sys.executable, "-m", "margin", "keys", "create", "--name", "viewer", "--team", "a", "--config", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    key = next(word for word in made.stdout.split() if word.startswith("mgn_"))
    with replicas(path, n=1, extra=("--workers", "2")) as urls:
        form = {"content-type": "application/x-www-form-urlencoded", "origin": urls[0]}
        with httpx.Client(base_url=urls[0]) as browser:
            login = browser.post("/dashboard/login", content=f"key={key}", headers=form)
            assert login.status_code == 303
            session = login.headers["set-cookie"].split(";")[0]
        statuses: Counter[int] = Counter()
        for _ in range(20):
            with httpx.Client(base_url=urls[0]) as client:  # a new connection: either worker
                statuses[client.get("/dashboard/api/overview", headers={"cookie": session}).status_code] += 1
        assert statuses == {200: 20}


def _running(pid: int) -> bool:
    """Alive and not a zombie (an ended worker whose new parent has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_workers_end_with_their_supervisor(tmp_path: Path) -> None:
    """`kill -9` of the supervisor used to leave both workers running, holding the port with the embedded Redis
    gone: every budgeted request a 503, and no restart possible on that port. They now end with it."""
    path = config(tmp_path, None)
    with replicas(path, n=1, extra=("--workers", "2")) as urls:
        _, workers = _until(urls[0], 200)
        assert len(workers) == 2
        supervisor = int(Path(f"/proc/{min(workers)}/stat").read_text().rsplit(")", 1)[1].split()[1])
        os.kill(supervisor, signal.SIGKILL)
        deadline = time.monotonic() + 45  # SIGTERM: each worker's graceful shutdown, nothing in flight
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in workers if _running(pid)]
        for pid in left:  # do not leave them behind if the assertion fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert left == []
