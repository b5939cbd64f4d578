"""The `margin` command. Each group lives in its own module here (shared options: `margin.cli.options`);
heavy imports stay inside the commands so `margin --help` is quick. The offline kits' commands (`bench`,
`eval`, `kv`, `models`, `plan`; and `batches`) are loaded only when named (or when the help lists them):
`margin serve` never imports the kits."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from margin.cli import audit, config, keys, ledger, rules, serve
from margin.cli.options import fail
from margin.errors import MarginError

DATABASE_ERRORS = ("sqlalchemy.", "alembic.")  # modules whose errors end as one line too (not imported here)
# name → (module, attribute): a typer app, or a command function
KITS: dict[str, tuple[str, str]] = {
    "bench": ("margin.bench.cli", "bench"),
    "eval": ("margin.evals.cli", "app"),
    "kv": ("margin.kv.cli", "app"),
    "models": ("margin.models.cli", "app"),
    "plan": ("margin.plan.cli", "app"),
    "batches": ("margin.cli.batches", "app"),  # not a kit (the gateway serves the Batch API): loaded lazily alike
}


class WithKits(TyperGroup):
    """A group whose kit commands are imported on first use."""

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted({*super().list_commands(ctx), *KITS})

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in KITS and cmd_name not in self.commands:
            self.add_command(load_kit(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: Any) -> Any:
        """Every command's own errors (a bad file, option or number: MarginError) end as one `error:` line and
        exit 2, wherever a command forgot to catch them; before, some printed a traceback."""
        try:
            return super().invoke(ctx)
        except MarginError as exc:
            raise fail(exc) from exc
        except OSError as exc:  # a file an option named: --out at a folder, in a read-only place… (was a traceback)
            if exc.filename is None:
                raise
            raise fail(f"cannot use {exc.filename}: {exc.strerror or exc}") from exc
        except Exception as exc:  # the database's and the migrations': a --db that is no ledger, an unknown revision
            if not type(exc).__module__.startswith(DATABASE_ERRORS):
                raise
            raise fail(f"ledger database: {getattr(exc, 'orig', None) or exc}") from exc


def load_kit(name: str) -> Any:
    """The click command of kit `name` (typer's, whose click is vendored: typed loosely here)."""
    module, attribute = KITS[name]
    found: Any = getattr(importlib.import_module(module), attribute)
    if isinstance(found, typer.Typer):
        command: Any = typer.main.get_group(found)
    else:
        holder = typer.Typer()
        holder.command(name)(found)
        command = typer.main.get_command(holder)
    command.name = name
    return command


app = typer.Typer(
    cls=WithKits, no_args_is_help=True, add_completion=False, help="margin: inference gateway + unit economics"
)
app.command("serve")(serve.serve)
app.add_typer(keys.keys_app, name="keys")
app.add_typer(audit.audit_app, name="audit")
app.add_typer(ledger.db_app, name="db")
app.add_typer(config.config_app, name="config")
app.add_typer(ledger.export_app, name="export")
app.add_typer(ledger.feedback_app, name="feedback")
app.add_typer(rules.budgets_app, name="budgets")
app.add_typer(rules.limits_app, name="limits")
app.add_typer(rules.flags_app, name="flags")
app.command("report")(ledger.report)
app.command("cost")(ledger.cost)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["app", "main"]
