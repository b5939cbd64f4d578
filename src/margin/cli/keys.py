"""`margin keys create|list|rotate|revoke`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from margin.cli.options import (
    ConfigOpt,
    DbOpt,
    JsonOpt,
    cli_origin,
    console,
    fail,
    reading,
    settings_from,
    sync_engine,
)
from margin.config import Settings
from margin.errors import MarginError
from margin.logs import failure
from margin.terminal import plain

keys_app = typer.Typer(no_args_is_help=True, help="Create, list, rotate and revoke API keys.")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="A name for the key's owner or use.")],
    team: Annotated[str | None, typer.Option("--team", help="Team the key's spend belongs to.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="key=value tag on every request.")] = None,
    org: Annotated[str | None, typer.Option("--org", help="Organisation the team belongs to.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="May call the /admin API.")] = False,
    policy: Annotated[
        str | None, typer.Option("--policy", help='JSON policy, e.g. \'{"jurisdictions": ["EU"], "pii": "redact"}\'.')
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option("--expires", help="Lifetime (90m, 12h, 30d) or ISO 8601 date-time; at most 10 years."),
    ] = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    json: JsonOpt = False,
) -> None:
    """Create an API key. It is printed once; only its hash is stored."""
    from margin import keyops, keys
    from margin.governance.rules import check_policy_models, parse_policy

    settings = settings_from(config, db)
    try:
        # the checks of POST /admin/keys (before: any length, control characters, any number of tags)
        fields = {"name": name, "team": team, "org": org, "tags": keyops.parse_tags(tag or []), "admin": admin}
        expiry = keyops.parse_expiry(expires) if expires is not None else {}
        spec = keys.KeyRequest.parse({**fields, "policy": parse_policy(policy), **expiry}).spec()
        check_policy_models(spec.policy, settings)
        record, key = keys.create_key(sync_engine(settings), spec, cli_origin())
    except MarginError as exc:
        raise fail(exc) from exc
    if json:
        print(orjson.dumps({**record.public(), "key": key}).decode())
        return
    out = console()
    owner = (plain(name), " (team ", plain(team or "-"), ")")
    out.print(Text.assemble("created key ", (record.id, "bold"), " for ", *owner))
    if record.expires_at is not None:
        out.print(f"it expires at {record.expires_at.isoformat(timespec='seconds')}")
    out.print("store it now, it is not shown again:")
    print(key)


@keys_app.command("list")
def keys_list(config: ConfigOpt = None, db: DbOpt = None, json: JsonOpt = False) -> None:
    """List keys (ids, owners, teams, tags, state); never the keys themselves."""
    from margin import keys

    with reading(settings_from(config, db)) as engine:
        records = keys.list_keys(engine)
    if json:
        print(orjson.dumps([{**r.public(), "revoked": r.revoked_at is not None} for r in records]).decode())
        return
    table = Table("id", "name", "team", "org", "tags", "created", "expires", "rotated", "state")
    now = datetime.now(UTC)
    for r in records:
        tags = ",".join(f"{k}={v}" for k, v in r.tags.items())
        state = r.state(now) + (" admin" if r.is_admin else "")
        labels = (plain(value) for value in (r.name, r.team or "-", r.org or "-", tags or "-"))
        rotated = str(r.rotated_at or "-")[:19]
        if r.previous_valid(now):
            rotated += f" (old secret until {str(r.previous_valid_until)[:19]})"
        table.add_row(r.id, *labels, str(r.created_at)[:19], str(r.expires_at or "never")[:19], rotated, state)
    console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id.")], config: ConfigOpt = None, db: DbOpt = None
) -> None:
    """Revoke a key (running gateways stop accepting it at once through storage.redis, else within
    admission.refresh_s)."""
    from margin import keys

    settings = settings_from(config, db)
    try:
        record = keys.revoke_key(sync_engine(settings), key_id, cli_origin())
    except MarginError as exc:
        raise fail(exc) from exc
    out = console()
    out.print(Text.assemble(f"revoked key {record.id} (", plain(record.name), ")"))
    out.print(_told(settings))


def _told(settings: Settings) -> str:
    """Tell running gateways of a revocation or rotation: at once through the Redis the config names
    (margin.keywatch), else at their next governance pass, which reads the change's audit log row. Says which."""
    from margin.keywatch import announce

    later = "see it within admission.refresh_s (their next pass over the audit log)"
    if not settings.storage.redis:
        return f"running gateways {later}"
    try:
        told = asyncio.run(announce(settings.storage.redis))
    except Exception as exc:  # never an error once the change is made: the audit log's row tells the gateways
        told = False
        later = f"{later} (announcing failed: {failure(exc)})"
    if told:
        return f"running gateways sharing storage.redis were told at once; any other will {later}"
    return f"storage.redis could not be reached: running gateways {later}"


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key id.")],
    grace: Annotated[
        str, typer.Option("--grace", help="How long the old secret keeps working: 0, 30m, 24h, 7d (at most 30d).")
    ] = "24h",
    config: ConfigOpt = None,
    db: DbOpt = None,
    json: JsonOpt = False,
) -> None:
    """A new secret for a key, same id (its budgets, limits, policy and history go on). Printed once."""
    from margin import keyops

    try:
        grace_s = keyops.RotateRequest.parse({"grace_s": keyops.parse_grace(grace)}).grace_s
        settings = settings_from(config, db)
        record, key = keyops.rotate_key(sync_engine(settings), key_id, timedelta(seconds=grace_s), cli_origin())
    except MarginError as exc:
        raise fail(exc) from exc
    until = record.previous_valid_until
    if json:
        print(
            orjson.dumps({**record.public(), "key": key, "valid_until": until and until.isoformat()}).decode(),
            flush=True,
        )
    else:
        out = console()
        out.print(Text.assemble("rotated key ", (record.id, "bold"), " (", plain(record.name), ")"))
        if grace_s:
            shown = until.isoformat(timespec="seconds") if until else "-"
            out.print(f"the old secret keeps working until {shown}")
        else:
            out.print("the old secret no longer works")
        out.print("store the new key now, it is not shown again:")
        print(key, flush=True)
    # the new key is out before the announcement, which may wait on a Redis (a Ctrl-C then loses nothing); what
    # became of it goes to stderr, so the key stays stdout's last line
    told = _told(settings)
    if not json:
        Console(stderr=True, highlight=False).print(told)
