"""Key operations beyond create, list and revoke: rotation (a new secret for the same key id, the old secret
accepted for a grace period), and the CLI's parsing of tags, lifetimes and grace periods."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from margin.errors import Conflict, InvalidRequest, NotFound
from margin.keys import KeyRecord, hash_key, new_key, unix_ms, validated
from margin.ledger import audit
from margin.ledger.models import api_keys


def parse_tags(pairs: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise InvalidRequest(f"tag {pair!r} must look like key=value")
        if name.strip() in tags:  # the last one won without a word
            raise InvalidRequest(f"tag {name.strip()!r} is given twice")
        tags[name.strip()] = value.strip()
    return tags


EXPIRY_UNITS = {"m": 60, "h": 3_600, "d": 86_400}
EXPIRY_SHAPE = re.compile(r"([1-9][0-9]{0,7})([mhd])")


def parse_expiry(text: str) -> dict[str, Any]:
    """`--expires`: a lifetime (`90m`, `12h`, `30d`) or an ISO 8601 date-time (UTC when it names no zone), as
    `KeyRequest`'s `expires_in_s` or `expires_at` (which checks the bounds: `MIN_EXPIRY_S`, `MAX_EXPIRY_S`)."""
    text = text.strip()
    if (found := EXPIRY_SHAPE.fullmatch(text)) is not None:
        return {"expires_in_s": int(found.group(1)) * EXPIRY_UNITS[found.group(2)]}
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            f"--expires {text!r}: give a lifetime such as 90m, 12h or 30d, or an ISO 8601 date-time",
            param="expires_at",
        ) from None
    return {"expires_at": at if at.tzinfo is not None else at.replace(tzinfo=UTC)}


DEFAULT_GRACE_S = 86_400  # the old secret works for a day after a rotation, unless told otherwise ...
MAX_GRACE_S = 30 * 86_400  # ... and for at most 30 days (0: it stops at once)
GRACE_SHAPE = re.compile(r"(0|[1-9][0-9]{0,7})([smhd]?)")
GRACE_UNITS = {"": 1, "s": 1, **EXPIRY_UNITS}


def parse_grace(text: str) -> int:
    """`--grace`: `0`, seconds, or a span (`90s`, `30m`, `24h`, `7d`), as `RotateRequest`'s `grace_s` (which
    checks the bound, `MAX_GRACE_S`)."""
    found = GRACE_SHAPE.fullmatch(text.strip())
    if found is None:
        raise InvalidRequest(f"--grace {text!r}: give 0 or a span such as 30m, 24h or 7d", param="grace_s")
    return int(found.group(1)) * GRACE_UNITS[found.group(2)]


class RotateRequest(BaseModel):
    """`POST /admin/keys/{key_id}/rotate`: how long the old secret keeps working (an empty body: a day)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grace_s: int = Field(
        DEFAULT_GRACE_S,
        ge=0,
        le=MAX_GRACE_S,
        strict=True,
        description="Seconds the old secret keeps working after the rotation (0: it stops at once; at most 30 days).",
    )

    @classmethod
    def parse(cls, data: Any) -> RotateRequest:
        return validated(cls, data)


def rotate_key(
    engine: sa.Engine, key_id: str, grace: timedelta, origin: audit.Origin | None = None
) -> tuple[KeyRecord, str]:
    """A new secret for an active key, same id (so its budgets, limits, policy, tags and ledger rows go on): the
    previous secret is accepted until `grace` from now (never past the key's own expiry) and a secret from
    before that, still in an earlier grace, stops at once, so at most two secrets work at any time. Dashboard
    sessions made with a secret end when it does (`KeyRecord.session_ended`). Revoking the key ends them all."""
    now = datetime.now(UTC)
    with engine.begin() as connection:
        # a rotation and a revocation take turns before either reads the key (as two revocations do): on SQLite,
        # FOR UPDATE does nothing, and a revocation committed between this read and the update below left the
        # key revoked while the caller was handed a new secret for it (200)
        audit.hold(connection)
        row = connection.execute(sa.select(api_keys).where(api_keys.c.id == key_id).with_for_update()).first()
        if row is None:
            raise NotFound(f"no key with id {key_id!r}")
        record = KeyRecord.from_row(row)
        if record.revoked_at is not None:
            raise Conflict(f"key {key_id!r} is revoked: it cannot be rotated (create a new key)", code="key_revoked")
        if record.expired(now):
            raise Conflict(f"key {key_id!r} has expired: it cannot be rotated (create a new key)", code="key_expired")
        _, key = new_key(key_id)
        until = now + grace if record.expires_at is None else min(now + grace, record.expires_at)
        not_before = record.sessions_not_before
        if record.rotated_at is not None:  # sessions of the secret that stops now (made before the last rotation)
            not_before = max(not_before or 0, unix_ms(record.rotated_at))
        values = {"key_hash": hash_key(key), "previous_hash": row.key_hash, "previous_valid_until": until}
        values |= {"rotated_at": now, "sessions_not_before": not_before}
        # neither a rotation nor a revocation in between (the hold above: checked again here, in the same update)
        same = sa.and_(api_keys.c.id == key_id, api_keys.c.key_hash == row.key_hash, api_keys.c.revoked_at.is_(None))
        if connection.execute(api_keys.update().where(same).values(**values)).rowcount == 0:
            raise Conflict(f"key {key_id!r} was rotated or revoked meanwhile; list it and rotate again if need be")
        rotated = replace(record, rotated_at=now, previous_valid_until=until, sessions_not_before=not_before)
        if origin is not None:
            change = audit.Change("key.rotate", key_id, before=record.public(), after=rotated.public())
            audit.record(connection, origin, change)
    return rotated, key
