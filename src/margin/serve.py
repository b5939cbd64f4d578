"""`margin serve`: checks that make the gateway safe to start, then uvicorn (uvloop + httptools), in one
process or, with `server.workers` > 1, in uvicorn's multi-process mode: one port, N worker processes, each
building the app from the settings the supervisor hands over (`worker_app`), with budgets, limits and the
exact cache shared through Redis (`margin.workers`)."""

from __future__ import annotations

import functools
import gc
import logging
import os
import resource
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from rich.console import Console
from rich.text import Text

from margin.api.heads import BoundedHttpToolsProtocol, ConnectionLimits
from margin.config import Settings, config_hash, is_loopback, load_settings, parse_settings, with_reloaded
from margin.errors import ConfigError
from margin.keys import open_exposure
from margin.ledger import db
from margin.ledger.models import api_keys
from margin.logs import configure as configure_logging
from margin.terminal import plain
from margin.urls import hide_password


def active_key_count(settings: Settings) -> int:
    db.upgrade(settings.storage.ledger)
    engine = db.make_sync_engine(settings.storage.ledger)
    try:
        with engine.connect() as connection:
            query = sa.select(sa.func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None))
            return int(connection.execute(query).scalar_one())
    finally:
        engine.dispose()


def check_exposure(settings: Settings, keys: int) -> None:
    """Without keys the gateway is open, so it may listen on loopback only (checked here before anything
    loads, and again when the app starts and decides open mode for good: `KeyCache.start`)."""
    if keys == 0 and not is_loopback(settings.server.host):
        raise open_exposure(settings.server.host)


def banner(console: Console, settings: Settings, keys: int) -> None:
    """The start-up lines. The config's names (models, aliases, backends, the address, the ledger) are literal
    text (`margin.terminal`): a model named `[link=https://…]x[/link]` is no hyperlink and `[/x]` no crash."""
    server = settings.server
    address = plain(f"http://{server.host}:{server.port}/v1")
    console.print(Text.assemble(("margin", "bold"), " gateway on ", address, f"  (config {config_hash(settings)})"))
    for name, model in settings.models.items():
        line = Text.assemble("  model ", plain(name, "cyan"))
        if model.aliases:
            line.append_text(Text.assemble(" (aliases: ", plain(", ".join(model.aliases)), ")"))
        kind = settings.backends[model.backend].kind
        console.print(line.append_text(Text.assemble(" → backend ", plain(model.backend), " [", plain(kind), "]")))
    console.print(Text.assemble("  ledger: ", plain(hide_password(settings.storage.ledger))))
    if keys == 0:
        console.print(
            "  [yellow]running OPEN: no API keys exist, so any local caller is accepted "
            "(loopback Host and same-origin browsers only). Create keys with `margin keys create`.[/]"
        )
    else:
        console.print(f"  {keys} active API key(s): requests need `Authorization: Bearer <key>`")


log = logging.getLogger("margin.serve")
# a stalled answer's connection is dropped this long after the app's StallWatch (which polls at most every 1 s)
# has ended a stalled stream as `stream_write_timeout` (margin.api.heads)
STALL_GRACE_S = 2.0
WORKER_SETTINGS = "MARGIN_WORKER_SETTINGS"  # the supervisor's settings (JSON), for its worker processes
WORKER_CONFIG = "MARGIN_WORKER_CONFIG"  # the config file (re-read on SIGHUP), when there is one


def tune_gc() -> None:
    """The gateway process allocates many short-lived objects per request and makes few reference cycles:
    the youngest generation is collected every 50,000 net allocations instead of 700, and what was imported
    at start is kept out of every collection (`gc.freeze`), as long-running Python servers commonly do. A
    profile at 500 RPS had ~16 % of the gateway's CPU in the cyclic collector before (benchmarks/README.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def worker_app() -> Any:
    """The app of one worker process (`--workers N`, uvicorn's factory)."""
    from margin.app import build_app
    from margin.workers import worker_started

    worker_started()
    tune_gc()
    handed = orjson.loads(os.environ[WORKER_SETTINGS])
    settings = parse_settings(handed["settings"], "the supervisor's settings")
    configure_logging(settings.server.log_level)
    config = os.environ.get(WORKER_CONFIG)
    if config:  # the file's rules as they are now: a worker started again after a reload has them too
        try:
            settings = with_reloaded(settings, load_settings(config))
        except ConfigError:
            log.exception("config file %s no longer loads; this worker runs the rules it was started with", config)
    return build_app(settings, config_path=Path(config) if config else None, config_hash=handed.get("config_hash"))


def protocol(settings: Settings) -> Any:
    """uvicorn's httptools protocol with the server's limits (a partial: it pickles to `--workers` processes)."""
    server = settings.server
    limits = ConnectionLimits(
        max_header_bytes=server.max_header_bytes,
        head_timeout_s=server.head_timeout_s,
        body_timeout_s=server.body_timeout_s,
        max_connections=server.max_connections,
        write_timeout_s=server.stream_write_timeout_s + STALL_GRACE_S,
    )
    return functools.partial(BoundedHttpToolsProtocol, limits=limits)


def open_files(max_connections: int) -> int:
    """Raise this process's open-files limit (inherited by its workers and children) to what `max_connections`
    needs: each client connection may hold an upstream one too, plus the ledger's and outbox's files. Returns the
    limit now; a hard limit below the need is logged, not raised past."""
    wanted = 2 * max_connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted or soft == resource.RLIM_INFINITY:
        return soft
    new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < wanted:
        log.warning(
            "open-files limit %d (hard) is below the %d that server.max_connections=%d needs; lower it or raise "
            "the limit (ulimit -n)",
            hard,
            wanted,
            max_connections,
        )
    return new


def _server_options(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.server.host,
        "port": settings.server.port,
        "loop": "uvloop",
        "http": protocol(settings),  # httptools, with bounds and deadlines on each request (margin.api.heads)
        "lifespan": "on",
        "access_log": False,
        "log_config": None,  # uvicorn's records (a 500's traceback) go through margin's escaping handler
        "log_level": settings.server.log_level,
        "timeout_graceful_shutdown": settings.server.shutdown_grace_s,  # then Client.stopping (margin.api.heads)
        "proxy_headers": False,  # margin reads no client address; skipping the middleware saves a hop per request
        "server_header": False,
    }


def run(settings: Settings, console: Console, config_path: Path | None = None) -> None:
    import uvicorn

    from margin.app import build_app
    from margin.workers import Revivals, metrics_dir, shared_state, supervise

    keys = active_key_count(settings)
    check_exposure(settings, keys)
    configure_logging(settings.server.log_level)
    for noisy in ("alembic", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    banner(console, settings, keys)
    open_files(settings.server.max_connections)
    workers = settings.server.workers
    if workers == 1:
        tune_gc()
        uvicorn.Server(uvicorn.Config(build_app(settings, config_path=config_path), **_server_options(settings))).run()
        return
    revivals: Revivals = []  # the embedded redis-servers', started again by the supervisor if one dies
    with shared_state(settings, revivals) as shared, metrics_dir():
        redis = plain(hide_password(shared.storage.redis or ""))
        console.print(Text.assemble(f"  {workers} worker processes; budgets, limits and cache shared through ", redis))
        handed = {"settings": shared.model_dump(mode="json"), "config_hash": config_hash(settings)}
        os.environ[WORKER_SETTINGS] = orjson.dumps(handed).decode()
        if config_path is not None:
            os.environ[WORKER_CONFIG] = str(config_path.resolve())
        supervise("margin.serve:worker_app", {"workers": workers, **_server_options(shared)}, revivals)
