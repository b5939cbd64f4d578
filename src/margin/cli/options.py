"""What every `margin` command shares: the --config/--db/--json options, settings with overrides, the
ledger engine, printing and failing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from margin.config import Settings, load_settings
from margin.errors import MarginError
from margin.terminal import print_error

if TYPE_CHECKING:
    from margin.ledger.audit import Origin

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (default: embedded).")]
DbOpt = Annotated[Path | None, typer.Option("--db", help="SQLite ledger file (overrides storage.ledger).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def console() -> Console:
    return Console(stderr=False, highlight=False)


def fail(error: MarginError | str, code: int = 2) -> typer.Exit:
    print_error(str(getattr(error, "message", error)))
    return typer.Exit(code)


def settings_from(config: Path | None, db: Path | None = None, **server: Any) -> Settings:
    try:
        settings = load_settings(config)
    except MarginError as exc:
        raise fail(exc) from exc
    if db is not None:
        storage = settings.storage.model_copy(update={"ledger": f"sqlite:///{db}"})
        settings = settings.model_copy(update={"storage": storage})
    overrides = {k: v for k, v in server.items() if v is not None}
    if overrides:
        settings = settings.model_copy(update={"server": settings.server.model_copy(update=overrides)})
    return settings


def cli_origin() -> Origin:
    """Who runs a CLI command, as the audit log names it: `cli:<OS user>`."""
    import getpass
    import os

    from margin.ledger.audit import Origin

    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (a container's arbitrary uid)
        user = f"uid{os.getuid()}"
    return Origin(f"cli:{user}", "cli")


LEDGER_REVISION_EXIT = 3  # a command that only reads, given a ledger at another revision than this margin's


def _must_exist(settings: Settings) -> None:
    """A command that only reads fails on a SQLite file that is not there (a mistyped --db made an empty
    ledger and reported zeros)."""
    from margin.errors import InvalidRequest
    from margin.ledger.db import sqlite_file

    database = sqlite_file(settings.storage.ledger)
    if database is not None and not Path(database).expanduser().exists():
        raise InvalidRequest(f"no ledger at {database} (check --db or storage.ledger)")
    if database is not None and Path(database).expanduser().is_dir():
        raise InvalidRequest(f"{database} is a folder, not a ledger file (check --db or storage.ledger)")


def sync_engine(settings: Settings, *, existing: bool = False) -> Any:
    """The ledger's engine, migrated (for a command that writes). `existing`: the SQLite file must be there."""
    from margin.ledger import db

    if existing:
        _must_exist(settings)
    db.upgrade(settings.storage.ledger)
    return db.make_sync_engine(settings.storage.ledger)


def read_engine(settings: Settings) -> Any:
    """The ledger's engine for a command that only reads (report, export, lists): it never writes (SQLite
    opened read-only, PostgreSQL READ ONLY transactions) and never migrates. A ledger at another revision is
    one `error:` line and exit LEDGER_REVISION_EXIT, naming the command that upgrades it."""
    from margin.errors import LedgerRevision
    from margin.ledger import db

    _must_exist(settings)
    database = db.sqlite_file(settings.storage.ledger)
    hint = f"`margin db upgrade --db {database}`" if database else "`margin db upgrade` (with the same --config)"
    engine = db.read_only_engine(settings.storage.ledger)
    try:
        db.check_revision(engine, hint)
    except LedgerRevision as exc:
        engine.dispose()
        raise fail(exc, LEDGER_REVISION_EXIT) from exc
    return engine


@contextmanager
def reading(settings: Settings) -> Iterator[Any]:
    """`read_engine`, disposed of after the block (its pooled connections closed)."""
    engine = read_engine(settings)
    try:
        yield engine
    finally:
        engine.dispose()
