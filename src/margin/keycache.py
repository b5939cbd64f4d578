"""The API keys as the gateway checks them on every request: a bounded cache of lookups by token hash (found and
not-found apart), refreshed with one query per key, served stale for a while when the database is unreachable,
and `authenticate`, the caller from the headers alone. The keys themselves (records, creation, revocation,
the checks of a record) are `margin.keys`."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

from margin.config import is_loopback
from margin.errors import AuthenticationFailed, Overloaded
from margin.keys import KeyRecord, bearer_token, hash_key, open_exposure, principal_of, well_formed
from margin.ledger.db import UNREACHABLE
from margin.ledger.models import api_keys
from margin.logs import printable
from margin.singleflight import SingleFlight
from margin.types import ANONYMOUS, Principal

log = logging.getLogger("margin.keys")

RETRY_S = 1.0  # while it is, a key's last answer is served and the database asked again this often


def _stale(entry: _Cached | None, exc: Exception) -> KeyRecord:
    """The database cannot be reached: a key it last said was active is served as it was (its revocation would
    need the database too), for `RETRY_S` before the next try; anything else is 503 (it cannot be checked).
    Before, every request of every key got a 500 from `ttl_s` after the database went down."""
    if entry is None or entry.record is None:
        log.warning("the key store (ledger database) cannot be reached: %s", printable(str(exc)))
        raise Overloaded(
            "API keys cannot be checked now (the ledger database is unreachable); retry shortly",
            code="auth_unavailable",
            headers={"retry-after": "1"},
        ) from exc
    entry.expires = time.monotonic() + RETRY_S
    return entry.record


@dataclass(slots=True)
class _Cached:
    record: KeyRecord | None
    expires: float


class _Bounded:
    """A dict of at most `size` entries that drops its oldest entry to make room (entries share one TTL, so
    the oldest is also the first to expire): filling it costs O(1) per entry and never empties it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: dict[str, _Cached] = {}

    def get(self, name: str, now: float) -> _Cached | None:
        entry = self.entries.get(name)
        return entry if entry is not None and now < entry.expires else None

    def put(self, name: str, entry: _Cached) -> None:
        self.entries.pop(name, None)
        if len(self.entries) >= self.size:
            del self.entries[next(iter(self.entries))]
        self.entries[name] = entry


class KeyCache:
    """Key lookups for the request path: hashed, cached for `ttl_s` (revocation takes effect within it).

    - Open mode is decided once, at start: no active key then → open (loopback only); the first key seen
      closes it for good, and no revocation ever opens it again.
    - A token that is not shaped like a key is refused without hashing or a query.
    - Keys found and tokens not found are cached apart, each bounded: a flood of random keys fills only the
      negative cache (oldest out first), so it can neither evict the real keys nor grow memory, and at most
      `max_lookups` queries for never-seen tokens run at once, whatever the flood.
    - When an entry expires, one query refreshes it and the requests arriving meanwhile wait for that query
      (under load, each expiry was a stampede of queries that stalled requests for seconds).
    - A token is looked up by its hash among the keys' current and previous (rotated) secrets; the record of a
      previous secret carries its grace end, checked on every request (`principal_of`), so the old secret ends
      on time even while cached. A rotation or revocation elsewhere (the CLI, a replica) is forgotten at once
      or within `admission.refresh_s` (margin.keywatch calls `forget`), at worst within `ttl_s`. The new secret
      is never refused from the not-found cache: entries are per token hash and a new secret's token was never
      presented before the rotation made it."""

    def __init__(self, engine: Any, ttl_s: float = 5.0, max_entries: int = 10_000, max_lookups: int = 4) -> None:
        self._engine = engine  # AsyncEngine
        self._ttl = ttl_s
        self._found = _Bounded(max_entries)
        self._unknown = _Bounded(max_entries)
        self._by_id = _Bounded(max_entries)
        self._lookups = asyncio.Semaphore(max_lookups)
        self._active: tuple[int, float] = (0, 0.0)
        self._counted = False
        self._open = False
        self._flights = SingleFlight()
        self._generation = 0  # bumped by `forget`: a lookup begun before it neither caches nor is shared after it
        self.queries = 0  # key lookups sent to the database (for tests and benchmarks)

    async def start(self, host: str) -> bool:
        """Decide open mode (no active key now); refuse it on a non-loopback address. Returns open mode."""
        self._open = await self.active_keys() == 0
        if self._open and not is_loopback(host):
            raise open_exposure(host)
        return self._open

    @property
    def open_mode(self) -> bool:
        """True while the gateway runs open: started with no key and none created since."""
        return self._open

    async def open_now(self) -> bool:
        """Open mode, re-checked (within `ttl_s`) while open: the first key created closes the gateway."""
        if self._open and await self.active_keys() > 0:
            self._open = False
        return self._open

    async def active_keys(self) -> int:
        count, expires = self._active
        if time.monotonic() < expires:
            return count
        return int(await self._flights.run("active", self._count_active))

    async def _count_active(self) -> int:
        try:
            async with self._engine.connect() as connection:
                query = sa.select(sa.func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None))
                count = int((await connection.execute(query)).scalar_one())
        except UNREACHABLE as exc:
            if not self._counted:  # never counted (at start): nothing to go on
                raise
            log.warning("active keys not counted (the ledger database cannot be reached): %s", printable(str(exc)))
            count = self._active[0]  # the last count, until the database answers again
            self._active = (count, time.monotonic() + RETRY_S)
            return count
        self._active, self._counted = (count, time.monotonic() + self._ttl), True
        return count

    def created(self) -> None:
        """A key was created through this process (the admin API): open mode ends now, not when the count of
        active keys is next read (other processes see it within `ttl_s`)."""
        self._open = False
        self._active = (self._active[0], 0.0)

    def forget(self) -> None:
        """Drop cached lookups (after a revocation or rotation, here or announced: margin.keywatch). A lookup
        whose query began before this (it may have read the key as active) answers only the requests already
        waiting for it: it is not cached, and later requests query again. Before, such a lookup landing after
        the revocation cached the revoked key as active for `ttl_s` (CI caught a revoked admin key still
        answered 200)."""
        self._generation += 1
        for cache in (self._found, self._unknown, self._by_id):
            cache.entries.clear()
        self._active = (self._active[0], 0.0)

    async def lookup(self, key: str) -> KeyRecord | None:
        if not well_formed(key):
            return None
        digest = hash_key(key)
        now = time.monotonic()
        if (hit := self._found.get(digest, now) or self._unknown.get(digest, now)) is not None:
            return hit.record
        known = digest in self._found.entries  # an expired entry of a real key: refreshed without queueing
        generation = self._generation
        flight = f"key:{generation}:{digest}"
        record: KeyRecord | None = await self._flights.run(flight, lambda: self._load(digest, known, generation))
        return record

    async def lookup_id(self, key_id: str) -> KeyRecord | None:
        """The active key with this id (dashboard sessions carry the id, signed, never the key)."""
        now = time.monotonic()
        if (hit := self._by_id.get(key_id, now)) is not None:
            return hit.record
        generation = self._generation
        flight = f"id:{generation}:{key_id}"
        record: KeyRecord | None = await self._flights.run(flight, lambda: self._load_id(key_id, generation))
        return record

    async def _load(self, digest: str, known: bool, generation: int) -> KeyRecord | None:
        try:
            if known:
                record = await self._select_hash(digest)
            else:
                async with self._lookups:
                    record = await self._select_hash(digest)
        except UNREACHABLE as exc:
            return _stale(self._found.entries.get(digest), exc)
        if generation != self._generation:
            return record  # read before a revocation or rotation through this process: not cached
        entry = _Cached(record, time.monotonic() + self._ttl)
        (self._found if record is not None else self._unknown).put(digest, entry)
        if record is None:
            self._found.entries.pop(digest, None)
        return record

    async def _load_id(self, key_id: str, generation: int) -> KeyRecord | None:
        try:
            record = await self._select(api_keys.c.id == key_id)
        except UNREACHABLE as exc:
            return _stale(self._by_id.entries.get(key_id), exc)
        if generation == self._generation:
            self._by_id.put(key_id, _Cached(record, time.monotonic() + self._ttl))
        return record

    async def _select_hash(self, digest: str) -> KeyRecord | None:
        """The unrevoked key whose current or previous secret has this hash (which of the two: compared in
        constant time), marked `by_previous` when it is the previous one."""
        row = await self._row(sa.or_(api_keys.c.key_hash == digest, api_keys.c.previous_hash == digest))
        if row is None or hmac.compare_digest(row.key_hash, digest):
            return KeyRecord.from_row(row) if row is not None else None
        previous = hmac.compare_digest(row.previous_hash or "", digest)
        return replace(KeyRecord.from_row(row), by_previous=True) if previous else None

    async def _select(self, where: Any) -> KeyRecord | None:
        row = await self._row(where)
        return KeyRecord.from_row(row) if row is not None else None

    async def _row(self, where: Any) -> Any:
        self.queries += 1
        async with self._engine.connect() as connection:
            return (await connection.execute(sa.select(api_keys).where(where, api_keys.c.revoked_at.is_(None)))).first()


async def authenticate(keys: KeyCache, headers: Mapping[str, str], x_api_key: bool = False) -> Principal:
    """The caller, from the headers alone (before any body is read): anonymous in open mode, else its key
    (`x_api_key`: also from the `x-api-key` header, where Anthropic's SDKs send it; it wins over a Bearer)."""
    if await keys.open_now():
        return ANONYMOUS
    token = (headers.get("x-api-key", "").strip() or None) if x_api_key else None
    token = token or bearer_token(headers)
    if token is None:
        sent = "`x-api-key: <key>` or `Authorization: Bearer <key>`" if x_api_key else "`Authorization: Bearer <key>`"
        raise AuthenticationFailed(f"missing API key: send {sent}", code="missing_api_key")
    return principal_of(await keys.lookup(token))
