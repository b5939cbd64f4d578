"""Shared test helpers: settings with fake backends, an in-process gateway, a live uvicorn server."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
import uvicorn
import yaml
from starlette.applications import Starlette

from margin.app import build_app
from margin.config import Settings, parse_settings
from margin.ledger import db as ledger_db
from margin.ledger.models import ledger
from margin.services import Services


def disk_full(fd: int, data: Any) -> int:
    """An `os.write` on a full disk (`SegmentWriter.os_write`, to make the ledger's outbox fail)."""
    raise OSError(errno.ENOSPC, "No space left on device")


def reserved_input(body: dict[str, Any]) -> int:
    """The input tokens budgets reserve for `body` (`margin.pipeline.ceiling.input_bound`, text only): the bytes
    of its JSON, which no honest token count passes (the estimate of one token per 3 characters can be)."""
    return len(orjson.dumps(body))


def fake_settings(db: Path, **overrides: Any) -> Settings:
    """A config with a fake chat backend (`fake`, self-hosted priced by TCO) and a fake list-priced one."""
    data: dict[str, Any] = {
        "storage": {"ledger": f"sqlite:///{db}", "flush_interval_ms": 10},
        "regions": {"eu": {"jurisdiction": "EU", "grid_zone": "FRA", "pue": 1.2, "usd_per_kwh": "0.20"}},
        "backends": {
            "fake": {
                "kind": "fake",
                "output_tokens": 5,
                "region": "eu",
                "hardware": {"usd_per_hour": "3.60", "watts_busy": 100},
            },
            "api": {"kind": "fake", "output_tokens": 4},
        },
        "models": {
            "fake-chat": {"backend": "fake", "aliases": ["fc"]},
            "fake-embed": {"backend": "fake", "kind": "embedding"},
            "priced": {"backend": "api", "price": {"input": "1.00", "output": "2.00", "version": "t1"}},
            "gpt-4o-mini": {"backend": "api"},
            "mystery": {"backend": "api"},
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_settings(data)


@dataclass
class Gateway:
    app: Starlette
    services: Services
    http: httpx.AsyncClient

    async def rows(self) -> list[Any]:
        await self.services.drain()
        await self.services.outbox.flush()
        async with self.services.engine.connect() as connection:
            result = await connection.execute(sa.select(ledger).order_by(ledger.c.id))
            return list(result)


@asynccontextmanager
async def gateway(settings: Settings) -> AsyncIterator[Gateway]:
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            yield Gateway(app, app.state.services, http)


def polls(timeout_s: float = 30.0) -> Iterator[int]:
    """The rounds of a poll bounded by the clock rather than by a count of tries: a loaded machine is slow,
    not wrong (the caller sleeps between rounds and asserts after the loop)."""
    deadline = time.monotonic() + timeout_s
    count = 0
    while True:
        yield count
        count += 1
        if time.monotonic() > deadline:
            return


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


@contextmanager
def server_logging_kept() -> Iterator[list[logging.Logger]]:
    """uvicorn's loggers as they were before the block, after it: a `uvicorn.Config` made in this process
    applies uvicorn's logging config (handlers of their own, no propagation, its level), which later tests in
    this process would otherwise find (a caplog or a logging test that expects margin's handler). Yields them."""
    loggers = [logging.getLogger(name) for name in SERVER_LOGGERS]
    kept = [(lg.handlers[:], lg.propagate, lg.disabled, lg.level) for lg in loggers]
    try:
        yield loggers
    finally:
        for lg, (handlers, propagate, disabled, level) in zip(loggers, kept, strict=True):
            lg.handlers[:], lg.propagate, lg.disabled, lg.level = handlers, propagate, disabled, level


@asynccontextmanager
async def live_server(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port inside this event loop."""
    with server_logging_kept():
        async with _live_server(app) as url:
            yield url


@asynccontextmanager
async def _live_server(app: Any) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", http="httptools", loop="asyncio"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 60  # the app's startup (migrations, models) on a loaded box: seconds
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn returned before it started")
        if time.monotonic() > deadline:
            server.should_exit = True
            await task
            raise RuntimeError("uvicorn did not start within 60 s")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


PORT_TAKEN = b"address already in use"  # what `margin serve` (uvicorn) logs when its port is taken


@contextmanager
def margin_serve(
    db: Path | None,
    log: Path,
    config: Path | None = None,
    extra: list[str] | None = None,
    ready_s: float = 180,
    *,
    group: bool = False,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`margin serve` as a user starts it (default config: the real local model; or `config`, a YAML file) in a
    subprocess on a free port; yields (base URL, process) once /readyz answers, and stops it with SIGTERM.
    `db`: a SQLite ledger file (--db); None leaves the config's `storage.ledger`. A port taken between
    `free_port` and the server's bind (by any connection's local port meanwhile) is another port, up to 3 tries.
    `group`: in a process group of its own, as a terminal runs it (`os.killpg` is its Ctrl-C)."""
    options = ["--db", str(db)] if db is not None else []
    options += ["--config", str(config)] if config is not None else []
    for tries_left in (2, 1, 0):
        port = free_port()
        command = [sys.executable, "-m", "margin", "serve", "--port", str(port), *options, *(extra or [])]
        with log.open("wb") as out:
            env = {**os.environ, "NO_COLOR": "1"}
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=group)
        url = f"http://127.0.0.1:{port}"
        if _ready(process, url, log, ready_s):
            break
        if not (tries_left and PORT_TAKEN in log.read_bytes()):
            pytest.fail(f"margin serve exited: {log.read_text()}")
    try:
        yield url, process
    finally:
        stop_gateway(process)


def _ready(process: subprocess.Popen[bytes], url: str, log: Path, ready_s: float) -> bool:
    """True once `url` answers /readyz while `process` runs, False if the process exited first; a process
    neither ready nor gone after `ready_s` is killed and the test fails."""
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    process.wait()
    pytest.fail(f"margin serve did not become ready: {log.read_text()}")


def stop_gateway(process: subprocess.Popen[Any], timeout_s: float = 60, *, signalled: bool = False) -> None:
    """SIGTERM (unless `signalled` already), the clean shutdown; a gateway still running `timeout_s` later is
    killed (never left behind to hold ports and files) and the test fails, saying so: a shutdown that hangs is a
    bug."""
    if process.poll() is not None:
        return
    if not signalled:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"margin serve (pid {process.pid}) did not exit within {timeout_s} s of SIGTERM; killed")


def child_pids(pid: int, *, at_least: int = 0, timeout_s: float = 10.0) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc), e.g. a gateway's ledger-ingest child; waits up to
    `timeout_s` for `at_least` of them (a child may be started just after the gateway answers)."""
    deadline = time.monotonic() + timeout_s
    while len(found := _children(pid)) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _children(pid: int) -> list[int]:
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):  # per thread: whichever started the child
        try:
            found += [int(child) for child in children.read_text().split()]
        except OSError:
            continue
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used so far, from /proc/<pid>/stat: what a piece of
    work cost, much as on an idle machine (a clock reads a loaded machine's waits for a core as well)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    """A process's resident memory now (kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@contextmanager
def repeating(step: Callable[[threading.Event], None]) -> Iterator[None]:
    """While the block runs, `step(done)` runs on a thread of its own: it loops until `done` is set, which
    happens when the block ends (and the thread is joined before the block's exit returns)."""
    done = threading.Event()
    runner = threading.Thread(target=step, args=(done,))
    runner.start()
    try:
        yield
    finally:
        done.set()
        runner.join()


@contextmanager
def peak_rss(pid: int, every_s: float = 0.002) -> Iterator[list[int]]:
    """While the block runs, a process's resident memory is sampled; yields [baseline kB, peak kB], the peak
    final once the block ends."""
    sizes = [rss_kb(pid)] * 2

    def sample(done: threading.Event) -> None:
        while not done.is_set():
            sizes[1] = max(sizes[1], rss_kb(pid))
            time.sleep(every_s)

    with repeating(sample):
        yield sizes


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for its new parent to reap it counts as exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def wait_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    """Those of `pids` still running after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while any(not gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if not gone(p)]


def wait_ledger_row(db: Path, url: str, request_id: str, timeout_s: float = 30) -> Any:
    """The SQLite ledger row of a request a running gateway (at `url`) answered: it is written just after the
    answer (by the gateway's ingest process), so the ledger is read again (each try after a request to the
    gateway and a short pause) until it is there, for up to `timeout_s` (it was 200 tries without a pause:
    well under a second where the gateway answers fast while its ingest process waits for a core)."""
    engine = ledger_db.make_sync_engine(f"sqlite:///{db}")
    query = sa.text("SELECT * FROM ledger WHERE request_id = :id")
    try:
        for _ in polls(timeout_s):
            with engine.connect() as connection:
                found = connection.execute(query, {"id": request_id}).first()
            if found is not None:
                return found
            httpx.get(url + "/readyz")
            time.sleep(0.01)
    finally:
        engine.dispose()
    raise AssertionError(f"no ledger row for {request_id} within {timeout_s:.0f} s")


def ledger_rows(db: Path, request_id: str) -> int:
    """How many rows the SQLite ledger holds for a request (0, or 1: never doubled)."""
    engine = ledger_db.make_sync_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as connection:
            query = sa.text("SELECT count(*) FROM ledger WHERE request_id = :id")
            return int(connection.execute(query, {"id": request_id}).scalar_one())
    finally:
        engine.dispose()


def ledger_columns(url: str, *columns: Any) -> list[tuple[Any, ...]]:
    """The ledger's rows (in the order written) as tuples of `columns` (`margin.ledger.models.ledger.c.*`)."""
    engine = ledger_db.make_sync_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sa.select(*columns).order_by(ledger.c.id))]
    finally:
        engine.dispose()


def chat_once(tmp_path: Path, config: dict[str, Any], body: dict[str, Any], key: str) -> httpx.Response:
    """One chat request with `key` to a `margin serve` of `config` (written to `tmp_path`/margin.yaml)."""
    path = tmp_path / "margin.yaml"
    path.write_text(yaml.safe_dump(config))
    with margin_serve(None, tmp_path / "serve.log", path) as (base, _):
        return httpx.post(
            f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
        )


def upstream_config(
    tmp_path: Path, ledger_url: str, upstream: str, model: dict[str, Any] | None = None, **sections: Any
) -> Path:
    """A config file beside the test: the ledger at `ledger_url` (flushed every 50 ms), one `openai` backend `up`
    at a fake `upstream` (its base URL, without /v1), one model `m` on it (`model`: its settings besides the
    backend; by default $1 per million tokens each way) and any other top-level `sections`; returns its path."""
    config = {
        "storage": {"ledger": ledger_url, "flush_interval_ms": 50},
        "backends": {"up": {"kind": "openai", "base_url": upstream + "/v1"}},
        "models": {"m": {"backend": "up", **(model or {"price": {"input": "1", "output": "1"}})}},
        **sections,
    }
    path = tmp_path / "margin.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def recorded_gateway(folder: Path, answer: Callable[[Any, Any], None]) -> Iterator[tuple[str, list[Any]]]:
    """`margin serve` (the SQLite ledger in `folder`, flushed every 10 ms) with one model `m` ($1 per million tokens
    each way) on an `openai` backend `up` without retries, in front of a recording upstream that answers with
    `answer(handler, body)`: (the gateway's URL, the bodies the upstream got)."""
    from tests.servers import http_thread, recording_handler

    bodies: list[Any] = []
    with http_thread(recording_handler(bodies, answer)) as base:
        config = {
            "storage": {"flush_interval_ms": 10},
            "backends": {"up": {"kind": "openai", "base_url": f"{base}/v1", "retries": {"attempts": 0}}},
            "models": {"m": {"backend": "up", "price": {"input": "1", "output": "1"}}},
        }
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        with margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml") as (url, _):
            yield url, bodies
