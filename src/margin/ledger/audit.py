"""The audit log: one row per administrative change (or denied or failed attempt at one), append-only and
hash-chained. A row's `hash` is sha256 of the previous row's hash and the row's canonical JSON (sorted keys,
no spaces; the time as ISO 8601 UTC with microseconds), so editing or deleting a row breaks the chain at the
next one, which `verify` names. Rows are appended one at a time: under a transaction-scoped advisory lock on
PostgreSQL, under SQLite's write lock there (the insert takes it before the previous hash is read).

A change stored in the database is recorded in the same transaction (`record` with the change's connection): it
is committed with its row or not at all. Secrets never reach a row: keys are recorded by their public metadata."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from margin.ledger.models import audit_anchor, audit_log

AUDIT_LOCK = 0x6D617267696E41  # the PostgreSQL advisory lock appends take turns under ("marginA")
OUTCOMES = ("ok", "denied", "failed")
SOURCES = ("http", "cli", "reload")
RULE_KINDS = ("budget", "limit", "flag")
ACTIONS = (
    "key.create",
    "key.revoke",
    "key.rotate",
    *(f"{kind}.{verb}" for kind in RULE_KINDS for verb in ("put", "delete")),
    "config.reload",
)
KEY_CHANGES = ("key.revoke", "key.rotate")  # a process holding such a key in its cache must hear of it
MAX_TARGET = 256
VERIFY_BATCH = 1000
RECORDED_SLACK = timedelta(minutes=1)  # `write_unrecorded` looks this far before its request began (clock steps)
FIELDS = ("id", "at", "actor", "actor_name", "source", "address", "action", "target", "request_id", "outcome")


@dataclass(frozen=True, slots=True)
class Origin:
    """Who makes a change, and how: `key:<id>` (its name in `name`) over HTTP from `address`, `cli:<os user>`,
    or `signal:SIGHUP` for a reload."""

    actor: str
    source: str
    name: str | None = None
    address: str | None = None
    request_id: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"audit source {self.source!r}")


@dataclass(frozen=True, slots=True)
class Change:
    """What an audit row says happened (the `Origin` says who did it)."""

    action: str
    target: str | None
    outcome: str = "ok"
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS or self.outcome not in OUTCOMES:
            raise ValueError(f"audit action {self.action!r} / outcome {self.outcome!r}")


@dataclass(frozen=True, slots=True)
class Filters:
    """`GET /admin/audit` and `margin audit list`: rows newest first, each filter optional."""

    action: str | None = None
    actor: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None  # the cursor: rows older than this one
    limit: int = 100


def utc(at: datetime) -> datetime:
    """SQLite hands back naive datetimes (written as UTC)."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def canonical(row: Mapping[str, Any]) -> bytes:
    """The bytes a row's hash covers: every column but `hash`, as JSON with sorted keys."""
    body = {name: row[name] for name in FIELDS}
    body["at"] = utc(row["at"]).isoformat(timespec="microseconds")
    body["before"], body["after"] = row["before"], row["after"]
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def chain(previous: str, row: Mapping[str, Any]) -> str:
    return hashlib.sha256(previous.encode() + canonical(row)).hexdigest()


def hold(connection: sa.Connection) -> None:
    """Take the audit log's lock in `connection`'s transaction (held until it ends): a change that reads what
    it is about to change (a rule's body before) takes it first, so that nothing changes in between. PostgreSQL:
    the appends' advisory lock (it stacks); SQLite: the database's write lock, by a write that changes nothing
    (the driver starts its transaction at the first write, and a read before it would see a snapshot of its own)."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK})
    else:
        connection.execute(audit_anchor.update().where(sa.false()).values(id=1))


def record(connection: sa.Connection, origin: Origin, change: Change) -> int:
    """Append one row in `connection`'s transaction; its id. The caller commits (with its change, if any)."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK})
    values = {
        "at": datetime.now(UTC),
        "actor": origin.actor[:160],
        "actor_name": origin.name,
        "source": origin.source,
        "address": (origin.address or "")[:64] or None,
        "action": change.action,
        "target": None if change.target is None else change.target[:MAX_TARGET],
        "request_id": origin.request_id,
        "outcome": change.outcome,
        "before": None if change.before is None else dict(change.before),
        "after": None if change.after is None else dict(change.after),
    }
    inserted = connection.execute(audit_log.insert().values(**values, hash="")).inserted_primary_key
    row_id = int(inserted[0]) if inserted is not None else 0
    previous = connection.execute(
        sa.select(audit_log.c.hash).where(audit_log.c.id < row_id).order_by(audit_log.c.id.desc()).limit(1)
    ).scalar()
    if previous is None:
        previous = connection.execute(sa.select(audit_anchor.c.hash)).scalar() or ""
    digest = chain(previous, {**values, "id": row_id})
    connection.execute(audit_log.update().where(audit_log.c.id == row_id).values(hash=digest))
    return row_id


def last_id(connection: sa.Connection) -> int:
    """The id of the log's last row (0: none), read at the end of the primary key's index."""
    return int(connection.execute(sa.select(sa.func.max(audit_log.c.id))).scalar() or 0)


def key_changes(connection: sa.Connection, after: int) -> tuple[int, bool]:
    """The last row's id, and whether a row after `after` revoked or rotated a key (margin.keywatch, every
    `admission.refresh_s`). The last id is read from the primary key's end, so a pass where nothing was appended
    costs one index lookup whatever the size of the log (and of `api_keys`); only the rows appended since are
    read for their action. Ids only grow as rows are appended in turn (the lock above), but a log pruned empty
    numbers again from 1 (SQLite): a last id below `after` reads every row."""
    last = last_id(connection)
    if last == after:
        return last, False
    changed = sa.and_(audit_log.c.action.in_(KEY_CHANGES), audit_log.c.outcome == "ok")
    since = audit_log.c.id > (after if last > after else 0)
    return last, connection.execute(sa.select(audit_log.c.id).where(since, changed).limit(1)).first() is not None


def write(engine: sa.Engine, origin: Origin, change: Change) -> int:
    """`record` in a transaction of its own: a change that lives outside the database (a reload), or an attempt
    that changed nothing (denied, failed)."""
    with engine.begin() as connection:
        return record(connection, origin, change)


def write_unrecorded(engine: sa.Engine, origin: Origin, change: Change, since: datetime) -> int | None:
    """`write`, unless the request (`origin.request_id`, begun at `since`) has a row already: a change recorded
    in its own transaction before its request crashed (refreshing what it changed) is in the log, once, as made.
    None: it was."""
    with engine.begin() as connection:
        if origin.request_id is not None:
            hold(connection)  # nothing is appended between the look and the append
            mine = sa.and_(audit_log.c.at >= since - RECORDED_SLACK, audit_log.c.request_id == origin.request_id)
            if connection.execute(sa.select(audit_log.c.id).where(mine).limit(1)).first() is not None:
                return None
        return record(connection, origin, change)


def entry(row: Any) -> dict[str, Any]:
    """A row as the admin API and `margin audit list --json` show it."""
    shown = {name: getattr(row, name) for name in FIELDS}
    shown["at"] = utc(row.at).isoformat()
    return {**shown, "before": row.before, "after": row.after, "hash": row.hash}


def page(engine: sa.Engine, filters: Filters) -> list[dict[str, Any]]:
    """Up to `filters.limit` rows, newest first."""
    query = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(filters.limit)
    for column, value in (
        (audit_log.c.action, filters.action),
        (audit_log.c.actor, filters.actor),
        (audit_log.c.target, filters.target),
    ):
        if value is not None:
            query = query.where(column == value)
    if filters.since is not None:
        query = query.where(audit_log.c.at >= filters.since)
    if filters.until is not None:
        query = query.where(audit_log.c.at < filters.until)
    if filters.before_id is not None:
        query = query.where(audit_log.c.id < filters.before_id)
    with engine.connect() as connection:
        return [entry(row) for row in connection.execute(query)]


@dataclass(frozen=True, slots=True)
class Verdict:
    """`verify`'s answer: how many rows matched, the head's hash (keep it elsewhere: see the README), and the
    first row whose hash does not match (None: the chain is whole)."""

    checked: int
    head: str
    broken_at: int | None = None
    anchored: bool = False  # the chain starts at a pruned boundary's hash


def _rows(connection: sa.Connection) -> Iterator[Any]:
    last = 0
    while True:
        batch = connection.execute(
            sa.select(audit_log).where(audit_log.c.id > last).order_by(audit_log.c.id).limit(VERIFY_BATCH)
        ).all()
        yield from batch
        if len(batch) < VERIFY_BATCH:
            return
        last = batch[-1].id


def verify(engine: sa.Engine) -> Verdict:
    """Walk the chain from the oldest kept row (from the pruned boundary's hash, if pruned)."""
    with engine.connect() as connection:
        anchor = connection.execute(sa.select(audit_anchor.c.hash)).scalar()
        previous, checked = anchor or "", 0
        for row in _rows(connection):
            if chain(previous, row._mapping) != row.hash:
                return Verdict(checked, previous, row.id, anchor is not None)
            previous, checked = row.hash, checked + 1
    return Verdict(checked, previous, None, anchor is not None)


def prune(engine: sa.Engine, days: int, now: datetime | None = None) -> int:
    """Delete rows older than `days`, keeping the last deleted row's hash in audit_anchor (the oldest kept row
    chains from it, so `verify` still passes); how many rows went."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK})
        last = connection.execute(
            sa.select(audit_log.c.id, audit_log.c.hash)
            .where(audit_log.c.at < cutoff)
            .order_by(audit_log.c.id.desc())
            .limit(1)
        ).first()
        if last is None:
            return 0
        gone = connection.execute(audit_log.delete().where(audit_log.c.id <= last.id)).rowcount
        anchor = {"last_pruned_id": last.id, "hash": last.hash, "pruned_at": datetime.now(UTC)}
        if connection.execute(audit_anchor.update().where(audit_anchor.c.id == 1).values(**anchor)).rowcount == 0:
            connection.execute(audit_anchor.insert().values(id=1, **anchor))
    return int(gone)
