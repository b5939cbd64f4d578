"""`margin config show|check`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from margin.cli.options import ConfigOpt, console, settings_from

config_app = typer.Typer(no_args_is_help=True, help="Show or check configuration.")


@config_app.command("show")
def config_show(
    default: Annotated[bool, typer.Option(help="Print the embedded default file.")] = False, config: ConfigOpt = None
) -> None:
    """Print the effective configuration (or the embedded default YAML). Passwords in its URLs (storage.ledger,
    storage.redis, a backend's base_url…) show as `***`: the hash is the real settings'."""
    import yaml

    from margin.config import config_hash, default_config_text

    if default:
        print(default_config_text(), end="")
        return
    settings = settings_from(config)
    print(f"# config_hash: {config_hash(settings)}")
    print(yaml.safe_dump(without_passwords(settings.model_dump(mode="json")), sort_keys=False), end="")


def without_passwords(value: Any) -> Any:
    """A settings dump with every URL's password hidden (`margin.urls`), wherever the URL is."""
    from margin.urls import hide_password

    if isinstance(value, dict):
        return {key: without_passwords(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_passwords(item) for item in value]
    return hide_password(value) if isinstance(value, str) else value


@config_app.command("check")
def config_check(config: Annotated[Path, typer.Argument(help="YAML file to validate.")]) -> None:
    """Validate a config file (unknown keys, types, references)."""
    from margin.config import config_hash
    from margin.terminal import plain

    settings = settings_from(config)
    out = console()
    for flag in settings.flags:  # loads (and is ignored) for files written before; the CLI and admin API refuse it
        if unused := flag.unused_arguments():
            out.print(plain(f"warning: flag {flag.name}: {flag.action} ignores {' and '.join(unused)}; remove it"))
    for name, model in settings.models.items():  # a per-token price where per million tokens is read
        tiers = model.price.service_tiers.items() if model.price is not None else ()
        for where, price in [("price", model.price), *((f"price.service_tiers.{t}", p) for t, p in tiers)]:
            for rate in price.tiny_rates() if price is not None else ():
                out.print(plain(f"warning: model {name}: {where}.{rate} {getattr(price, rate)} is USD per million "
                                "tokens, under $0.001: a per-token price?"))  # fmt: skip
            if price is not None and price.dear_cache_reads():
                dear = f"{where}.cached_input {price.cached_input} is above input {price.input}"
                out.print(plain(f"warning: model {name}: {dear} (budgets reserve a prompt at it): a typo?"))
    out.print(
        f"ok: {len(settings.backends)} backends, {len(settings.models)} models, config_hash {config_hash(settings)}"
    )
