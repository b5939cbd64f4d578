"""Governance fixtures: keys on a fresh ledger, and a real redis-server on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from margin import keys
from margin.ledger import db
from tests.helpers import free_port


def make_key(db_path: Path, **spec: object) -> tuple[str, str]:
    url = f"sqlite:///{db_path}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    try:
        record, key = keys.create_key(engine, keys.NewKey(**spec))  # type: ignore[arg-type]
    finally:
        engine.dispose()
    return record.id, key


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (Debian package `redis-server`), private to this test session."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        pytest.fail("redis-server is not installed (apt-get install redis-server); .ci/run installs it")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([*args, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)
