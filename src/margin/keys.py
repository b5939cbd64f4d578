"""API keys: shown once, stored as sha256 hashes. Format `mgn_<id>_<secret>`; the id is public."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from margin.errors import InvalidRequest, NotFound
from margin.ledger.models import api_keys
from margin.singleflight import SingleFlight

PREFIX = "mgn"


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

    @classmethod
    def from_row(cls, row: Any) -> KeyRecord:
        return cls(
            row.id,
            row.name,
            row.team,
            dict(row.tags or {}),
            row.created_at,
            row.revoked_at,
            row.org,
            bool(row.is_admin),
            dict(row.policy) if row.policy else None,
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
        }


def new_key() -> tuple[str, str]:
    key_id = secrets.token_hex(4)
    return key_id, f"{PREFIX}_{key_id}_{secrets.token_urlsafe(24)}"


def parse_tags(pairs: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise InvalidRequest(f"tag {pair!r} must look like key=value")
        tags[name.strip()] = value.strip()
    return tags


@dataclass(frozen=True, slots=True)
class NewKey:
    name: str
    team: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    org: str | None = None
    is_admin: bool = False
    policy: dict[str, Any] | None = None


def create_key(engine: sa.Engine, spec: NewKey) -> tuple[KeyRecord, str]:
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
    }
    with engine.begin() as connection:
        connection.execute(api_keys.insert().values(**values))
    record = KeyRecord(key_id, spec.name, spec.team, spec.tags, now, None, spec.org, spec.is_admin, spec.policy)
    return record, key


def list_keys(engine: sa.Engine) -> list[KeyRecord]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(api_keys).order_by(api_keys.c.created_at))
        return [KeyRecord.from_row(row) for row in rows]


def revoke_key(engine: sa.Engine, key_id: str) -> KeyRecord:
    with engine.begin() as connection:
        result = connection.execute(
            api_keys.update()
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
        if result.rowcount == 0:
            raise NotFound(f"no active key with id {key_id!r}")
        row = connection.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one()
    return KeyRecord.from_row(row)


@dataclass(slots=True)
class _Cached:
    record: KeyRecord | None
    expires: float


class KeyCache:
    """Key lookups for the request path: hashed, cached for `ttl_s` (revocation takes effect within it).
    When an entry expires, one query refreshes it and the requests arriving meanwhile wait for that query
    instead of each sending its own (under load, each expiry was a stampede of queries that made new
    database connections and stalled requests for seconds)."""

    def __init__(self, engine: Any, ttl_s: float = 5.0, max_entries: int = 10_000) -> None:
        self._engine = engine  # AsyncEngine
        self._ttl = ttl_s
        self._max = max_entries
        self._entries: dict[str, _Cached] = {}
        self._active: tuple[int, float] = (0, 0.0)
        self._flights = SingleFlight()

    @property
    def open_mode(self) -> bool:
        """True when, at the last look, no active key existed (the gateway then runs open)."""
        return self._active[0] == 0

    async def active_keys(self) -> int:
        count, expires = self._active
        if time.monotonic() < expires:
            return count
        return int(await self._flights.run("active", self._count_active))

    async def _count_active(self) -> int:
        async with self._engine.connect() as connection:
            query = sa.select(sa.func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None))
            count = int((await connection.execute(query)).scalar_one())
        self._active = (count, time.monotonic() + self._ttl)
        return count

    def forget(self) -> None:
        """Drop cached lookups (after a revocation through this process)."""
        self._entries.clear()
        self._active = (self._active[0], 0.0)

    async def lookup(self, key: str) -> KeyRecord | None:
        digest = hash_key(key)
        cached = self._entries.get(digest)
        if cached is not None and time.monotonic() < cached.expires:
            return cached.record
        record: KeyRecord | None = await self._flights.run(f"key:{digest}", lambda: self._load(digest))
        return record

    async def _load(self, digest: str) -> KeyRecord | None:
        now = time.monotonic()
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(
                    sa.select(api_keys).where(api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None))
                )
            ).first()
        record = KeyRecord.from_row(row) if row is not None else None
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[digest] = _Cached(record, now + self._ttl)
        return record
