"""`margin budgets|limits|flags …`: the same rules as the admin API, written to the ledger database. A
running gateway picks changes up within `admission.refresh_s` (or at once with `POST /admin/reload`)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from margin.cli.options import ConfigOpt, DbOpt, JsonOpt, cli_origin, fail, reading, settings_from, sync_engine
from margin.errors import MarginError
from margin.terminal import plain

ScopeOpt = Annotated[
    str,
    typer.Option(
        "--scope",
        help="global, team=T, org=O, key=ID, model=M, tag=K=V, user=U; each user: user=*, each tag K value: tag=K=*.",
    ),
]

budgets_app = typer.Typer(no_args_is_help=True, help="Spend caps in $ or tokens per key, team, org, tag or model.")
limits_app = typer.Typer(no_args_is_help=True, help="Requests and tokens per minute per key, team or org.")
flags_app = typer.Typer(no_args_is_help=True, help="Kill switches and overrides, effective without restart.")


def parse_scope(text: str) -> dict[str, Any]:
    if text == "global":
        return {"kind": "global"}
    kind, sep, value = text.partition("=")
    if not sep or not value:
        raise typer.BadParameter(f"{text!r}: use global or kind=value (team=search, tag=customer=acme)")
    return {"kind": kind, "value": value}


def _run(action: Callable[[Any, Any], Any], config: Path | None, db: Path | None, *, writes: bool) -> Any:
    """`action(engine, settings)` on the ledger: migrated first where it `writes`, else read-only, unmigrated."""
    settings = settings_from(config, db)
    try:
        if writes:
            return action(sync_engine(settings), settings)
        with reading(settings) as engine:
            return action(engine, settings)
    except MarginError as exc:
        raise fail(exc) from exc


def _save(kind: str, data: dict[str, Any], config: Path | None, db: Path | None) -> None:
    from margin.governance.rules import save_rule

    spec = _run(lambda engine, settings: save_rule(engine, kind, data, cli_origin(), settings), config, db, writes=True)
    Console(highlight=False).print(plain(f"saved {kind}: {orjson.dumps(spec.model_dump(mode='json')).decode()}"))


def _list(kind: str, config: Path | None, db: Path | None, json: bool) -> None:
    import sqlalchemy as sa

    from margin.governance.rules import build_rules
    from margin.ledger.models import gov_rules

    def read(engine: Any, settings: Any) -> list[dict[str, Any]]:
        with engine.connect() as connection:
            rows = connection.execute(sa.select(gov_rules)).all()
        listing: list[dict[str, Any]] = build_rules(settings, rows).listing(kind)  # type: ignore[arg-type]
        return listing

    rows = _run(read, config, db, writes=False)
    if json:
        print(orjson.dumps(rows).decode())
        return
    if not rows:
        Console().print(f"no {kind}s")
        return
    columns = [c for c in rows[0] if c != "source"] + ["source"]
    table = Table(*columns)
    for row in rows:
        table.add_row(*(_cell(row[c]) for c in columns))
    Console(highlight=False).print(table)


def _cell(value: Any) -> Text:
    if isinstance(value, dict):
        return plain("global" if value.get("kind") == "global" else f"{value.get('kind')}={value.get('value')}")
    return plain("-" if value is None else value)


def _delete(kind: str, name: str, config: Path | None, db: Path | None) -> None:
    from margin.governance.rules import delete_rule

    _run(lambda engine, settings: delete_rule(engine, settings, kind, name, cli_origin()), config, db, writes=True)
    Console().print(plain(f"deleted {kind} {name}"))


@budgets_app.command("set")
def budgets_set(
    name: Annotated[str, typer.Argument(help="Budget name (shown in 429 errors).")],
    scope: ScopeOpt,
    usd: Annotated[Decimal | None, typer.Option(help="Cap in USD.")] = None,
    tokens: Annotated[int | None, typer.Option(help="Cap in tokens (input + output).")] = None,
    period: Annotated[str, typer.Option(help="hour, day, month (UTC calendar) or lifetime.")] = "month",
    mode: Annotated[str, typer.Option(help="hard: reject over budget; soft: allow and warn.")] = "hard",
    alert_pct: Annotated[int, typer.Option(help="Warn from this share of the cap.")] = 80,
    config: ConfigOpt = None,
    db: DbOpt = None,
) -> None:
    """Create or replace a budget."""
    data = {"name": name, "scope": parse_scope(scope), "period": period, "mode": mode, "alert_pct": alert_pct}
    caps = (("usd", str(usd) if usd is not None else None), ("tokens", tokens))
    data.update({k: v for k, v in caps if v is not None})  # a 0 is refused, not dropped
    _save("budget", data, config, db)


@budgets_app.command("list")
def budgets_list(config: ConfigOpt = None, db: DbOpt = None, json: JsonOpt = False) -> None:
    """Budgets from the config file and the database (live spend: GET /admin/budgets)."""
    _list("budget", config, db, json)


@budgets_app.command("delete")
def budgets_delete(name: str, config: ConfigOpt = None, db: DbOpt = None) -> None:
    """Delete a stored budget."""
    _delete("budget", name, config, db)


@limits_app.command("set")
def limits_set(
    scope: ScopeOpt,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens (input + output) per minute.")] = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
) -> None:
    """Create or replace the rate limit of a scope."""
    data = {"scope": parse_scope(scope), **{k: v for k, v in (("rpm", rpm), ("tpm", tpm)) if v is not None}}
    _save("limit", data, config, db)


@limits_app.command("list")
def limits_list(config: ConfigOpt = None, db: DbOpt = None, json: JsonOpt = False) -> None:
    """Rate limits from the config file and the database."""
    _list("limit", config, db, json)


@limits_app.command("delete")
def limits_delete(
    scope: Annotated[str, typer.Argument(help="The limit's scope, e.g. team=search.")],
    config: ConfigOpt = None,
    db: DbOpt = None,
) -> None:
    """Delete a stored rate limit."""
    _delete("limit", scope, config, db)


@flags_app.command("set")
def flags_set(
    name: Annotated[str, typer.Argument(help="Flag name (shown in 403 errors).")],
    target: Annotated[str, typer.Option(help="global, model=M, backend=B, tag=K=V, team=T, org=O or key=ID.")],
    action: Annotated[str, typer.Option(help="disable, force_model, cap_max_tokens or require_cache.")],
    model: Annotated[
        str | None, typer.Option(help="force_model only (other actions refuse it): the model to use instead.")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="cap_max_tokens only (other actions refuse it): the cap.")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (returned to callers).")] = "",
    disabled: Annotated[bool, typer.Option("--off", help="Store the flag switched off.")] = False,
    config: ConfigOpt = None,
    db: DbOpt = None,
) -> None:
    """Create or replace a flag."""
    data: dict[str, Any] = {"name": name, "target": parse_scope(target), "action": action, "reason": reason}
    data["enabled"] = not disabled
    data.update({k: v for k, v in (("model", model), ("max_tokens", max_tokens)) if v is not None})  # all checked
    _save("flag", data, config, db)


@flags_app.command("list")
def flags_list(config: ConfigOpt = None, db: DbOpt = None, json: JsonOpt = False) -> None:
    """Flags from the config file and the database."""
    _list("flag", config, db, json)


@flags_app.command("delete")
def flags_delete(name: str, config: ConfigOpt = None, db: DbOpt = None) -> None:
    """Delete a stored flag."""
    _delete("flag", name, config, db)
