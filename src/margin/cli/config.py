"""`margin config show|check`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from margin.cli.options import ConfigOpt, console, settings_from

config_app = typer.Typer(no_args_is_help=True, help="Show or check configuration.")


@config_app.command("show")
def config_show(
    default: Annotated[bool, typer.Option(help="Print the embedded default file.")] = False, config: ConfigOpt = None
) -> None:
    """Print the effective configuration (or the embedded default YAML)."""
    import yaml

    from margin.config import config_hash, default_config_text

    if default:
        print(default_config_text(), end="")
        return
    settings = settings_from(config)
    print(f"# config_hash: {config_hash(settings)}")
    print(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False), end="")


@config_app.command("check")
def config_check(config: Annotated[Path, typer.Argument(help="YAML file to validate.")]) -> None:
    """Validate a config file (unknown keys, types, references)."""
    from margin.config import config_hash

    settings = settings_from(config)
    console().print(
        f"ok: {len(settings.backends)} backends, {len(settings.models)} models, config_hash {config_hash(settings)}"
    )
