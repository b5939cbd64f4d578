"""`margin eval …` commands. Heavy imports stay inside the commands."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="Evaluations on labelled data: routing, cache, guards.")
