"""`margin keys create|list|revoke`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import orjson
import typer
from rich.table import Table
from rich.text import Text

from margin.cli.options import ConfigOpt, DbOpt, JsonOpt, console, fail, settings_from, sync_engine
from margin.errors import MarginError
from margin.terminal import plain

keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")


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
    from margin import keys
    from margin.governance.rules import check_policy_models, parse_policy

    settings = settings_from(config, db)
    try:
        # the checks of POST /admin/keys (before: any length, control characters, any number of tags)
        fields = {"name": name, "team": team, "org": org, "tags": keys.parse_tags(tag or []), "admin": admin}
        expiry = keys.parse_expiry(expires) if expires is not None else {}
        spec = keys.KeyRequest.parse({**fields, "policy": parse_policy(policy), **expiry}).spec()
        check_policy_models(spec.policy, settings)
        record, key = keys.create_key(sync_engine(settings), spec)
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

    records = keys.list_keys(sync_engine(settings_from(config, db)))
    if json:
        print(orjson.dumps([{**r.public(), "revoked": r.revoked_at is not None} for r in records]).decode())
        return
    table = Table("id", "name", "team", "org", "tags", "created", "expires", "state")
    now = datetime.now(UTC)
    for r in records:
        tags = ",".join(f"{k}={v}" for k, v in r.tags.items())
        state = r.state(now) + (" admin" if r.is_admin else "")
        labels = (plain(value) for value in (r.name, r.team or "-", r.org or "-", tags or "-"))
        table.add_row(r.id, *labels, str(r.created_at)[:19], str(r.expires_at or "never")[:19], state)
    console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id.")], config: ConfigOpt = None, db: DbOpt = None
) -> None:
    """Revoke a key (the running gateway stops accepting it within server.key_cache_ttl_s)."""
    from margin import keys

    try:
        record = keys.revoke_key(sync_engine(settings_from(config, db)), key_id)
    except MarginError as exc:
        raise fail(exc) from exc
    console().print(Text.assemble(f"revoked key {record.id} (", plain(record.name), ")"))
