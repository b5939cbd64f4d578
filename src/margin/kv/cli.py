"""`margin kv …` commands. Heavy imports (torch, transformers) stay inside the commands."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="KV-cache compression research kit (TurboQuant vs baselines).")
