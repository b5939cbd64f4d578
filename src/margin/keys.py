"""API keys: shown once, stored as sha256 hashes. Format `mgn_<id>_<secret>`; the id is public."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import sqlalchemy as sa
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from margin.errors import AuthenticationFailed, ConfigError, Conflict, InvalidRequest, NotFound
from margin.ledger import audit
from margin.ledger.measures import EVERY_TEAM
from margin.ledger.models import api_keys
from margin.specs import Policy
from margin.types import Principal

PREFIX = "mgn"
KEY_SHAPE = re.compile(r"mgn_[0-9a-f]{8}_[A-Za-z0-9_-]{32}")  # what new_key() makes


def well_formed(key: str) -> bool:
    """Shaped like a key `new_key()` makes: anything else is refused without hashing or a database query."""
    return len(key) == 45 and KEY_SHAPE.fullmatch(key) is not None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    team: str | None
    tags: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    revoked_at: datetime | None = None
    org: str | None = None
    is_admin: bool = False
    policy: dict[str, Any] | None = None
    sessions_not_before: int | None = None  # Unix ms: dashboard sessions issued before it were ended (logout)
    expires_at: datetime | None = None  # aware (UTC): refused from then on; None: never expires
    rotated_at: datetime | None = None  # the last rotation (a new secret, same id); None: never rotated
    previous_valid_until: datetime | None = None  # the secret before the last rotation is accepted until then
    by_previous: bool = False  # this record was looked up by that previous secret (`KeyCache.lookup`)
    # the caller it names, built once per record (the cache's), not per request (`principal_of`: ~1.5 µs)
    principal: Principal = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        principal = Principal(self.id, self.name, self.team, self.tags, self.org, self.is_admin, self.policy)
        object.__setattr__(self, "principal", principal)

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def previous_valid(self, now: datetime) -> bool:
        """The secret before the last rotation is still in its grace period."""
        return self.previous_valid_until is not None and now < self.previous_valid_until

    def session_ended(self, issued_ms: int, now: datetime) -> bool:
        """A dashboard session issued at `issued_ms` (Unix ms) is ended by a logout (`sessions_not_before`), and
        by a rotation once the secret that made it is no longer accepted: a session issued before the last
        rotation lives as long as the previous secret's grace (a rotation with grace 0 ends it at once)."""
        if issued_ms < (self.sessions_not_before or 0):
            return True
        return self.rotated_at is not None and issued_ms < unix_ms(self.rotated_at) and not self.previous_valid(now)

    @classmethod
    def from_row(cls, row: Any) -> KeyRecord:
        return cls(
            row.id,
            row.name,
            row.team,
            dict(row.tags or {}),
            _aware(row.created_at),  # every time shown with its zone (on SQLite these two had none)
            _aware(row.revoked_at),
            row.org,
            bool(row.is_admin),
            dict(row.policy) if row.policy else None,
            row.sessions_not_before,
            _aware(row.expires_at),
            _aware(row.rotated_at),
            _aware(row.previous_valid_until),
        )

    def public(self) -> dict[str, Any]:
        """What the admin API and `margin keys list --json` show (never the hash)."""
        return {
            "id": self.id,
            "name": self.name,
            "team": self.team,
            "org": self.org,
            "tags": self.tags,
            "admin": self.is_admin,
            "policy": self.policy,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "rotated_at": self.rotated_at.isoformat() if self.rotated_at else None,
            "previous_valid_until": self.previous_valid_until.isoformat() if self.previous_valid_until else None,
            "state": self.state(datetime.now(UTC)),
        }

    def state(self, now: datetime) -> str:
        return "revoked" if self.revoked_at else "expired" if self.expired(now) else "active"


def _aware(at: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (stored as UTC): made aware, so they compare with `datetime.now(UTC)`."""
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


def unix_ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def new_key(key_id: str | None = None) -> tuple[str, str]:
    """A new key: a new id, or a new secret for an existing id (a rotation)."""
    key_id = secrets.token_hex(4) if key_id is None else key_id
    return key_id, f"{PREFIX}_{key_id}_{secrets.token_urlsafe(24)}"


MIN_EXPIRY_S = 60  # a key lives at least a minute ...
MAX_EXPIRY_S = 3650 * 86_400  # ... and at most ten years
Label = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], data: Any) -> M:
    """A request body as `model`, or 400 naming the first field at fault. Strict: a value of another JSON type
    is refused, never coerced (`"admin": "true"`, `"expires_in_s": 3600.5`, `"grace_s": true`)."""
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = str(first["msg"]).removeprefix("Value error, ")  # pydantic's prefix on a validator's own
        raise InvalidRequest(f"{param or 'body'}: {message}", param=param) from exc


def _iso_text(value: object) -> object:
    """A date-time given as text (JSON has no other way), read as pydantic reads one, so that strict validation
    (`validated`) takes it; any other type is left to be refused (no Unix seconds as a number)."""
    if not isinstance(value, str):
        return value
    try:
        return TypeAdapter(AwareDatetime).validate_python(value)
    except ValidationError as exc:
        raise ValueError(exc.errors()[0]["msg"]) from None


class KeyRequest(BaseModel):
    """`POST /admin/keys`: the key to create (the same model documents the route in /openapi.json)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Label
    team: Label | None = None
    org: Label | None = None
    tags: dict[Label, Label] = Field(default_factory=dict, max_length=32)
    admin: bool = False
    policy: Policy | None = None
    expires_at: Annotated[AwareDatetime, BeforeValidator(_iso_text)] | None = Field(
        None, description="When the key stops working (ISO 8601, with a zone)."
    )
    expires_in_s: int | None = Field(
        None, ge=MIN_EXPIRY_S, le=MAX_EXPIRY_S, description="Or: seconds from now until the key stops working."
    )

    @field_validator("expires_at")
    @classmethod
    def _expiry(cls, at: datetime | None) -> datetime | None:
        if at is not None and not MIN_EXPIRY_S <= (at - datetime.now(UTC)).total_seconds() <= MAX_EXPIRY_S:
            raise ValueError(f"must be between {MIN_EXPIRY_S} s and 10 years from now, not {at.isoformat()}")
        return at

    @model_validator(mode="after")
    def _one_expiry(self) -> KeyRequest:
        if self.expires_at is not None and self.expires_in_s is not None:
            raise ValueError("give `expires_at` or `expires_in_s`, not both")
        return self

    @classmethod
    def parse(cls, data: Any) -> KeyRequest:
        return validated(cls, data)

    def spec(self) -> NewKey:
        """The key to create (its policy already validated: stored without its unset fields)."""
        policy = self.policy.model_dump(exclude_none=True) if self.policy is not None else None
        expires = self.expires_at.astimezone(UTC) if self.expires_at is not None else None
        if self.expires_in_s is not None:
            expires = datetime.now(UTC) + timedelta(seconds=self.expires_in_s)
        return NewKey(self.name, self.team, self.tags, self.org, self.admin, policy, expires)


@dataclass(frozen=True, slots=True)
class NewKey:
    name: str
    team: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    org: str | None = None
    is_admin: bool = False
    policy: dict[str, Any] | None = None
    expires_at: datetime | None = None


def create_key(engine: sa.Engine, spec: NewKey, origin: audit.Origin | None = None) -> tuple[KeyRecord, str]:
    """A new key and its secret (shown once). `origin`: who creates it, recorded in the audit log in the same
    transaction (None only where no one administers: tests' fixtures)."""
    if spec.team == EVERY_TEAM:
        raise InvalidRequest(f"team {EVERY_TEAM!r} is reserved: the rollups' rows of every team", param="team")
    key_id, key = new_key()
    now = datetime.now(UTC)
    values = {
        "id": key_id,
        "name": spec.name,
        "team": spec.team,
        "tags": spec.tags,
        "org": spec.org,
        "is_admin": spec.is_admin,
        "policy": spec.policy,
        "key_hash": hash_key(key),
        "created_at": now,
        "expires_at": spec.expires_at,
    }
    record = KeyRecord(
        key_id, spec.name, spec.team, spec.tags, now, None, spec.org, spec.is_admin, spec.policy, None, spec.expires_at
    )
    with engine.begin() as connection:
        connection.execute(api_keys.insert().values(**values))
        if origin is not None:
            audit.record(connection, origin, audit.Change("key.create", key_id, after=record.public()))
    return record, key


def list_keys(engine: sa.Engine) -> list[KeyRecord]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(api_keys).order_by(api_keys.c.created_at))
        return [KeyRecord.from_row(row) for row in rows]


def page_keys(engine: sa.Engine, limit: int, after: str | None = None) -> tuple[list[KeyRecord], bool]:
    """At most `limit` keys in the order of their ids, those after the id `after` (the last of the page before;
    it need not exist), and whether more follow: one range of the primary key's index, never a sort of them all."""
    query = sa.select(api_keys).order_by(api_keys.c.id).limit(limit + 1)
    if after is not None:
        query = query.where(api_keys.c.id > after)
    with engine.connect() as connection:
        records = [KeyRecord.from_row(row) for row in connection.execute(query)]
    return records[:limit], len(records) > limit


def end_sessions(engine: sa.Engine, key_id: str, at_ms: int) -> None:
    """Every dashboard session of the key issued before `at_ms` (Unix ms) is refused from now on (logout)."""
    with engine.begin() as connection:
        connection.execute(api_keys.update().where(api_keys.c.id == key_id).values(sessions_not_before=at_ms))


def revoke_key(engine: sa.Engine, key_id: str, origin: audit.Origin | None = None) -> KeyRecord:
    """Revoke an active key. The last active admin key cannot be revoked (nobody could administer the
    gateway, and a gateway started with keys never opens again): create its successor first. An expired admin
    key does not count as active (it administers nothing)."""
    now = datetime.now(UTC)
    with engine.begin() as connection:
        # two revocations take turns before either reads the admins: FOR UPDATE below does this on PostgreSQL only,
        # and on SQLite two admins revoking each other at once both succeeded, leaving no admin key
        audit.hold(connection)
        unexpired = sa.or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now)
        admins = connection.execute(
            sa.select(api_keys.c.id)
            .where(api_keys.c.is_admin.is_(True), api_keys.c.revoked_at.is_(None), unexpired)
            .with_for_update()  # two concurrent revocations cannot each leave the other as the last admin
        ).scalars()
        if list(admins) == [key_id]:
            raise Conflict(
                f"key {key_id!r} is the last active admin key; for a new secret rotate it (`margin keys rotate "
                f"{key_id}`), or create its successor (`margin keys create --name NAME --admin`), then revoke this one",
                code="last_admin_key",
            )
        result = connection.execute(
            api_keys.update().where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=now)
        )
        if result.rowcount == 0:
            raise NotFound(f"no active key with id {key_id!r}")
        record = KeyRecord.from_row(connection.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one())
        if origin is not None:
            before = {**record.public(), "revoked_at": None, "state": "active"}
            audit.record(connection, origin, audit.Change("key.revoke", key_id, before=before, after=record.public()))
    return record


def open_exposure(host: str) -> ConfigError:
    """Without keys the gateway is open, so it may listen on loopback only."""
    return ConfigError(
        f"refusing to listen on {host} with no API keys: anyone could spend through this gateway. "
        "Create one first (`margin keys create --name NAME --team TEAM`) or bind 127.0.0.1."
    )


def bearer_token(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _still_valid(record: KeyRecord, now: datetime) -> None:
    """401 for a key past its expiry, or for the old secret of a rotated key past its grace."""
    if record.expires_at is not None and record.expires_at <= now:
        raise AuthenticationFailed(f"this API key expired at {record.expires_at.isoformat()}", code="key_expired")
    if record.by_previous and not record.previous_valid(now):
        ended = record.previous_valid_until.isoformat() if record.previous_valid_until else "its rotation"
        raise AuthenticationFailed(
            f"this API key was rotated: its old secret stopped working at {ended}; use the new key",
            code="key_rotated",
        )


def principal_of(record: KeyRecord | None) -> Principal:
    """The caller a key record names. Every way in (the API, the admin API, the dashboard, the batch worker)
    comes here, with the record as cached: an expiry is checked on each call, a comparison (no query)."""
    if record is None:
        raise AuthenticationFailed("invalid or revoked API key")
    if record.expires_at is not None or record.by_previous:  # the clock is read only for a key that needs it
        _still_valid(record, datetime.now(UTC))
    return record.principal
