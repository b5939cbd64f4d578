"""`margin serve`: the gateway. Imports nothing of the offline kits."""

from __future__ import annotations

from typing import Annotated

import typer

from margin.cli.options import ConfigOpt, DbOpt, console, fail, settings_from
from margin.errors import MarginError


def serve(
    config: ConfigOpt = None,
    db: DbOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Processes on the one port (budgets and limits shared: storage.redis or embedded)."),
    ] = None,
) -> None:
    """Start the gateway (OpenAI-compatible API on http://HOST:PORT/v1)."""
    from margin.serve import run

    settings = settings_from(config, db, host=host, port=port, workers=workers)
    try:
        run(settings, console(), config)
    except MarginError as exc:
        raise fail(exc) from exc
