"""Admin rule changes across two `margin serve` replicas sharing a real Redis and a real PostgreSQL ledger: a
budget taken by one replica holds on the other, counted from what the ledger says its scope has spent."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa
import yaml
from redis import asyncio as aioredis

from margin.ledger import db
from margin.ledger.models import ledger
from tests.cut_proxy import cut_proxy
from tests.governance.test_replicas import _flush, config, replicas
from tests.helpers import free_port
from tests.servers import redis_server

pytestmark = pytest.mark.integration

BODY = {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}  # $0.01 each


def _key(path: Path, *args: str) -> str:
    made = subprocess.run(
        [sys.executable, "-m", "margin", "keys", "create", "--config", str(path), *args],
        capture_output=True,
        check=False,
        text=True,
    )
    assert made.returncode == 0, made.stderr  # what failed, in the test's report
    return next(word for word in made.stdout.split() if word.startswith("mgn_"))


def _spent(url: str, team: str | None, rows: int) -> int:
    """The team's spend in the ledger (every team's: None), once it holds `rows` rows (the outbox is moved
    within a second)."""
    engine = db.make_sync_engine(url)
    deadline = time.monotonic() + 30
    try:
        while True:
            with engine.connect() as connection:
                found = connection.execute(sa.select(ledger.c.team, ledger.c.cost_nanousd)).all()
            if len(found) >= rows or time.monotonic() > deadline:
                return sum(row.cost_nanousd or 0 for row in found if team is None or row.team == team)
            time.sleep(0.1)
    finally:
        engine.dispose()


def _chat(urls: list[str], key: str, n: int) -> Counter[int]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return Counter(
        httpx.post(f"{urls[i % 2]}/v1/chat/completions", json=BODY, headers=headers, timeout=30).status_code
        for i in range(n)
    )


def test_a_budget_moved_to_another_scope_counts_that_scopes_spend(
    tmp_path: Path, redis_url: str, fresh_postgres: str
) -> None:
    """A budget's counter was named by the budget's name and window only. Replaced under the same name with
    another scope (PUT /admin/budgets), it went on from the old scope's counter: a $0.10 cap moved onto a
    team that had already spent $0.30 admitted $0.08 more over the two replicas. Its counter is now its own,
    reconciled from the ledger: every request of that team is refused."""
    path = config(tmp_path, redis_url, fresh_postgres)
    data = yaml.safe_load(path.read_text())
    data["budgets"] = []
    data["admission"] = {"refresh_s": 0.5}
    data["storage"]["flush_interval_ms"] = 50
    path.write_text(yaml.safe_dump(data))
    db.upgrade(fresh_postgres)
    asyncio.run(_flush(redis_url))
    admin = _key(path, "--name", "ops", "--admin")
    idle, busy = (_key(path, "--name", team, "--team", team) for team in ("idle", "busy"))
    with replicas(path) as urls:
        assert _chat(urls, busy, 30) == {200: 30}
        assert _spent(fresh_postgres, "busy", 30) == 300_000_000  # $0.30, before any budget
        put = {"name": "cap", "scope": {"kind": "team", "value": "idle"}, "usd": "0.10", "period": "lifetime"}
        admin_headers = {"authorization": f"Bearer {admin}"}
        assert httpx.put(f"{urls[0]}/admin/budgets", json=put, headers=admin_headers).status_code == 200
        time.sleep(2)  # refresh_s on the other replica, with room
        assert _chat(urls, idle, 2) == {200: 2}  # the counter is used on both replicas
        put["scope"] = {"kind": "team", "value": "busy"}
        assert httpx.put(f"{urls[0]}/admin/budgets", json=put, headers=admin_headers).status_code == 200
        time.sleep(2)
        statuses = _chat(urls, busy, 20)
        spent = _spent(fresh_postgres, "busy", 52)
    assert statuses == {429: 20}  # was 8 × 200 (the $0.02 idle had spent was all the old counter held)
    assert spent == 300_000_000  # was $0.38 against a $0.10 cap


def _status_until(url: str, wanted: int, timeout_s: float = 10) -> int:
    deadline = time.monotonic() + timeout_s
    while (status := httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=30).status_code) != wanted:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return status


def test_a_reload_reaches_the_other_replica_after_redis_lost_its_count(tmp_path: Path, redis_url: str) -> None:
    """Reloads were announced by counting them in Redis (INCR), each process comparing the count with the one
    it last saw. A Redis restarted without persistence counts from 0 again: the first reload after it brought
    the count back to 1, which a replica that had followed one reload before took for no news, and it kept
    serving its old config (a model disabled on one replica only). An announcement is now a fresh token."""
    path = config(tmp_path, redis_url)
    data = yaml.safe_load(path.read_text())
    data["budgets"][0]["usd"] = "1000"  # never the reason for a refusal here
    data["admission"] = {"refresh_s": 0.5}
    path.write_text(yaml.safe_dump(data))
    asyncio.run(_flush(redis_url))
    with replicas(path) as (first, second):
        assert httpx.post(f"{first}/admin/reload", json={}).json()["config_file"] is True
        time.sleep(2)  # the second follows it (nothing changed)
        asyncio.run(_flush(redis_url))  # Redis restarted without persistence
        data["flags"] = [{"name": "off", "target": {"kind": "model", "value": "priced"}, "action": "disable"}]
        path.write_text(yaml.safe_dump(data))
        assert httpx.post(f"{first}/admin/reload", json={}).json()["config_file"] is True
        assert _status_until(first, 403, timeout_s=1) == 403
        assert _status_until(second, 403) == 403  # was 200 for good: the reload never reached it


def _ids(url: str, n: int) -> set[str]:
    """The ledger's request ids, once it holds at least `n` rows (or after 30 s)."""
    engine = db.make_sync_engine(url)
    deadline = time.monotonic() + 30
    try:
        while True:
            with engine.connect() as connection:
                found = {row.request_id for row in connection.execute(sa.select(ledger.c.request_id))}
            if len(found) >= n or time.monotonic() > deadline:
                return found
            time.sleep(0.2)
    finally:
        engine.dispose()


def test_known_keys_are_served_while_the_ledger_database_is_down(
    tmp_path: Path, redis_url: str, fresh_postgres: str
) -> None:
    """The ledger database unreachable for 3 s under two replicas. Key lookups went to it once their cache
    entry expired (`server.key_cache_ttl_s`), and the error escaped: every request of every key was a 500
    (the connection often dropped too) until it came back. A key it last said was active is now served as it
    was, and every answered request has its row once the database is back (the outbox)."""
    host, port = urlsplit(fresh_postgres).netloc.split("@")[1].split(":")
    with cut_proxy(host, int(port)) as proxy:
        proxied = fresh_postgres.replace(f":{port}/", f":{proxy.port}/")
        path = config(tmp_path, redis_url, proxied)
        data = yaml.safe_load(path.read_text())
        data["budgets"][0]["usd"] = "1000"  # never the reason for a refusal here
        data["server"]["key_cache_ttl_s"] = 0.5
        data["storage"]["flush_interval_ms"] = 50
        path.write_text(yaml.safe_dump(data))
        db.upgrade(proxied)
        asyncio.run(_flush(redis_url))
        headers = {"authorization": f"Bearer {_key(path, '--name', 'svc', '--team', 'a')}"}
        with replicas(path) as urls, httpx.Client(headers=headers, timeout=30) as client:
            answered: list[str] = []
            statuses: Counter[int] = Counter()

            def send(n: int) -> None:
                for i in range(n):
                    response = client.post(f"{urls[i % 2]}/v1/chat/completions", json=BODY)
                    statuses[response.status_code] += 1
                    if response.status_code == 200:
                        answered.append(response.headers["x-margin-request-id"])
                    time.sleep(0.05)

            send(4)  # both replicas know the key and the budget
            proxy.cut()
            send(40)  # ~3 s: six times the key cache's TTL
            down = Counter(statuses)
            proxy.restore()
            send(4)
            recorded = _ids(fresh_postgres, len(answered))
    assert down == {200: 44}  # was {500: ~40, 200: ~4}
    assert statuses == {200: 48} and set(answered) <= recorded


def test_a_redis_back_from_an_older_snapshot_does_not_forget_the_spend_since(
    tmp_path: Path, fresh_postgres: str
) -> None:
    """Redis restarted from a snapshot holds the budget counter as it was when the snapshot was taken: it
    exists, so no reconciliation ran, and the spend since was forgotten (a $1.00 budget: $0.30 at the snapshot,
    $0.80 at the restart, 40 requests then all admitted: $1.20 spent). Each replica now sees the new run id and
    raises the counter to the ledger's spend: 20 are admitted, $1.00 in all."""
    port, workdir = free_port(), tmp_path / "redis"
    workdir.mkdir()
    with contextlib.ExitStack() as last:
        first = contextlib.ExitStack()
        last.callback(first.close)  # a second close does nothing
        url = first.enter_context(redis_server(port, workdir))
        path = config(tmp_path, url, fresh_postgres)
        data = yaml.safe_load(path.read_text())
        data["admission"] = {"refresh_s": 0.3}
        data["storage"]["flush_interval_ms"] = 50
        path.write_text(yaml.safe_dump(data))
        db.upgrade(fresh_postgres)
        with replicas(path) as urls:
            statuses = _chat(urls, "", 30)
            asyncio.run(_save(url))  # the snapshot: $0.30 spent
            statuses += _chat(urls, "", 50)
            assert _spent(fresh_postgres, None, 80) == 800_000_000
            first.close()  # SIGTERM: no save (`--save ""`), so it comes back from the snapshot
            last.enter_context(redis_server(port, workdir))
            asyncio.run(_raised(url, 800_000_000))  # a replica's next pass (refresh_s), however loaded the machine
            after = _chat(urls, "", 40)
            spent = _spent(fresh_postgres, None, 120)
    assert statuses == {200: 80}
    assert after == {200: 20, 429: 20}  # was {200: 40}
    assert spent == 1_000_000_000  # was $1.20 against the $1.00 hard budget


async def _raised(url: str, spent: int, timeout_s: float = 60.0) -> None:
    """Until a budget counter holds `spent` (raised to the ledger's spend by a replica's pass after the restart;
    a fixed sleep was too short on a loaded 2-core machine)."""
    client = aioredis.from_url(url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            names = [name async for name in client.scan_iter(match="mgn:c:*")]
            values = [await client.hget(name, "spent") for name in names]
            if any(value is not None and int(value) >= spent for value in values):
                return
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()
    raise AssertionError(f"no counter was raised to {spent} within {timeout_s} s")


async def _save(url: str) -> None:
    client = aioredis.from_url(url)
    await client.save()
    await client.aclose()


def test_a_reload_taken_while_redis_was_down_reaches_the_other_replica_when_it_is_back(
    tmp_path: Path, redis_url: str
) -> None:
    """`POST /admin/reload` on one replica while Redis is unreachable: it reloads and answers 200, but the
    announcement failed and was never made again, so the other replica kept its old config for good (a model
    disabled on one replica only). It is now announced by the first pass after Redis is back. The passes that
    met Redis down each log one line, not a traceback."""
    host, port = urlsplit(redis_url).netloc.split(":")
    with cut_proxy(host, int(port)) as proxy:
        path = config(tmp_path, f"redis://127.0.0.1:{proxy.port}/0")
        data = yaml.safe_load(path.read_text())
        data["budgets"] = []  # nothing here needs Redis but the announcement
        data["admission"] = {"refresh_s": 0.3}
        path.write_text(yaml.safe_dump(data))
        with replicas(path) as (first, second):
            proxy.cut()
            data["flags"] = [{"name": "off", "target": {"kind": "model", "value": "priced"}, "action": "disable"}]
            path.write_text(yaml.safe_dump(data))
            assert httpx.post(f"{first}/admin/reload", json={}, timeout=60).json()["config_file"] is True
            assert _status_until(first, 403, timeout_s=1) == 403
            time.sleep(1)
            proxy.restore()
            assert _status_until(second, 403) == 403  # was 200 for good
        logs = [(tmp_path / f"gateway-{urlsplit(url).port}.log").read_text() for url in (first, second)]
    # the refresh passes that met Redis down: a one-line warning each, no traceback (was one per pass)
    assert "refreshing governance rules failed" in logs[0] and "Traceback" not in "".join(logs)


def test_a_ledger_outage_is_a_503_never_a_500_and_its_end_fails_no_read(
    tmp_path: Path, redis_url: str, fresh_postgres: str
) -> None:
    """The ledger database unreachable while Redis lost the budget's counter (so a request must read the ledger
    to rebuild it), and an admin read meanwhile, under two replicas; then the database is back. A counter's
    rebuild caught only SQLAlchemy's errors, and asyncpg raises its own OSError when a connection cannot be made:
    that request was a 500 with a traceback. `/admin/budgets` was a 500 during the outage, and again after it on
    each pooled connection the outage had broken (and the batch worker's leases were not given back at shutdown).
    Now: 503s (retryable) while it is down, 200s as soon as it is back, and no traceback in either replica's log."""
    host, port = urlsplit(fresh_postgres).netloc.split("@")[1].split(":")
    with cut_proxy(host, int(port)) as proxy:
        proxied = fresh_postgres.replace(f":{port}/", f":{proxy.port}/")
        path = config(tmp_path, redis_url, proxied)
        db.upgrade(proxied)
        asyncio.run(_flush(redis_url))
        admin = {"authorization": f"Bearer {_key(path, '--name', 'ops', '--admin')}"}
        headers = {"authorization": f"Bearer {_key(path, '--name', 'svc', '--team', 'a')}"}
        with replicas(path) as urls, httpx.Client(timeout=30) as client:

            def statuses() -> list[int]:
                answers = [client.post(f"{url}/v1/chat/completions", json=BODY, headers=headers) for url in urls]
                answers += [client.get(f"{url}/admin/budgets", headers=admin) for url in urls]
                return [answer.status_code for answer in answers]

            before = statuses()
            proxy.cut()
            asyncio.run(_flush(redis_url))  # the counter is gone: rebuilding it needs the ledger
            down = statuses()
            proxy.restore()
            after = statuses()
            proxy.cut()  # a restart between two reads: every pooled connection broken, none used meanwhile
            proxy.restore()
            again = statuses()
        logs = "".join((tmp_path / f"gateway-{urlsplit(url).port}.log").read_text() for url in urls)
    assert before == [200, 200, 200, 200]
    assert down[:2] == [503, 503] and 500 not in down  # was 500 for the requests (asyncpg's OSError)
    assert after == [200, 200, 200, 200]
    assert again == [200, 200, 200, 200]
    # a pooled connection the restart broke, used at shutdown: the batch worker's leases were not given back
    # (other replicas waited out `lease_s` for its jobs), with a traceback; pooled connections are now pre-pinged
    assert "could not give its leases back" not in logs
    assert "Traceback" not in logs
