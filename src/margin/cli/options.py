"""What every `margin` command shares: the --config/--db/--json options, settings with overrides, the
ledger engine, printing and failing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from margin.config import Settings, load_settings
from margin.errors import MarginError
from margin.terminal import message

if TYPE_CHECKING:
    from margin.ledger.audit import Origin

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (default: embedded).")]
DbOpt = Annotated[Path | None, typer.Option("--db", help="SQLite ledger file (overrides storage.ledger).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def console() -> Console:
    return Console(stderr=False, highlight=False)


def fail(error: MarginError | str, code: int = 2) -> typer.Exit:
    text = message(str(getattr(error, "message", error)))
    Console(stderr=True, highlight=False).print(Text.assemble(("error:", "bold red"), " ", text))
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


def sync_engine(settings: Settings, *, existing: bool = False) -> Any:
    """The ledger's engine, migrated. `existing`: a command that only reads (report, export) fails on a SQLite
    file that is not there (a mistyped --db made an empty ledger and reported zeros)."""
    import sqlalchemy as sa

    from margin.errors import InvalidRequest
    from margin.ledger import db

    url = sa.make_url(settings.storage.ledger)
    on_disk = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    if existing and on_disk and not Path(str(url.database)).exists():
        raise InvalidRequest(f"no ledger at {url.database} (check --db or storage.ledger)")
    db.upgrade(settings.storage.ledger)
    return db.make_sync_engine(settings.storage.ledger)
