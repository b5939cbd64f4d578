"""Stored responses (`responses.store`): one row per Responses API answer, its turn's input items as received and
the Response object as answered, owned by the key that made it and the key's org. Only the owner reads, lists,
continues or deletes one: anyone else is told it does not exist (404; continuing it, OpenAI's 400
`previous_response_not_found`), as is everyone once it expired (then it is pruned). A `previous_response_id` chain
is walked newest first, bounded in turns and bytes, each link checked for owner and expiry; a cycle cannot be
built (a response may only continue one stored before it) but is checked. Called on the read threads
(`Services.read`): never on the event loop."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from margin.errors import InvalidRequest, NotFound
from margin.ledger.models import stored_responses
from margin.types import Principal

T = stored_responses.c


@dataclass(frozen=True, slots=True)
class Owner:
    """Who may read a stored response: its key's org when the key has one (OpenAI scopes responses to a project),
    else the key alone; with no keys (open mode), everyone."""

    key_id: str | None
    org: str | None

    @classmethod
    def of(cls, principal: Principal | None) -> Owner:
        return cls(None, None) if principal is None else cls(principal.key_id, principal.org)

    def owns(self) -> sa.ColumnElement[bool]:
        if self.org is not None:
            return T.org == self.org
        key = T.key_id.is_(None) if self.key_id is None else T.key_id == self.key_id
        return sa.and_(key, T.org.is_(None))


@dataclass(frozen=True, slots=True)
class Turn:
    """One response to store: its id, what it continued, this turn's input items and the Response object."""

    response_id: str
    previous_id: str | None
    input: list[dict[str, Any]]
    response: Mapping[str, Any]


def size(turn: Turn) -> int:
    """The bytes a turn takes as JSON (what `responses.max_stored_bytes` bounds)."""
    return len(orjson.dumps(turn.input)) + len(orjson.dumps(turn.response))


def save(engine: sa.Engine, owner: Owner, turn: Turn, limits: tuple[int, int], now: datetime | None = None) -> bool:
    """Store a turn (`limits`: its retention in days, the most bytes it may take); False if it is too large (then
    nothing is stored)."""
    days, max_bytes = limits
    if (taken := size(turn)) > max_bytes:
        return False
    at = now or datetime.now(UTC)
    response = turn.response
    values = {
        "id": turn.response_id,
        "key_id": owner.key_id,
        "org": owner.org,
        "previous_id": turn.previous_id,
        "created_at": at,
        "expires_at": at + timedelta(days=days),
        "model": str(response.get("model", ""))[:256],
        "status": str(response.get("status", ""))[:16],
        "bytes": taken,
        "input": turn.input,
        "response": dict(response),
    }
    with engine.begin() as connection:
        connection.execute(stored_responses.insert().values(**values))
    return True


def _live(response_id: str, owner: Owner, now: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(T.id == response_id, owner.owns(), T.expires_at > now)


def _missing(response_id: str) -> NotFound:
    return NotFound(f"no response with id {response_id[:64]!r} (stored responses expire)", code="not_found")


def _not_continued(response_id: str, missing: str) -> InvalidRequest:
    """OpenAI's 400 for a `previous_response_id` it cannot find (`previous_response_not_found`, which a client
    may answer by sending the whole conversation), for the response named or an earlier link of its chain."""
    if missing == response_id:
        why = f"no response with id {response_id[:64]!r} (stored responses expire)"
    else:
        why = f"an earlier response of this conversation ({missing[:64]}) expired or was deleted"
    message = f"previous_response_id: {why}: send the conversation as `input`"
    return InvalidRequest(message, param="previous_response_id", code="previous_response_not_found")


def fetch(engine: sa.Engine, owner: Owner, response_id: str, now: datetime | None = None) -> dict[str, Any]:
    """The Response object as it was answered (404 if it is not the owner's, expired or was never stored)."""
    with engine.connect() as connection:
        found = connection.execute(
            sa.select(T.response).where(_live(response_id, owner, now or datetime.now(UTC)))
        ).scalar()
    if not isinstance(found, dict):
        raise _missing(response_id)
    return found


def delete(engine: sa.Engine, owner: Owner, response_id: str, now: datetime | None = None) -> dict[str, Any]:
    with engine.begin() as connection:
        gone = connection.execute(
            stored_responses.delete().where(_live(response_id, owner, now or datetime.now(UTC)))
        ).rowcount
    if not gone:
        raise _missing(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


def items(
    engine: sa.Engine, owner: Owner, response_id: str, page: tuple[int, str | None, bool], now: datetime | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """`GET /v1/responses/{id}/input_items`: a page of this turn's input items (`page`: the limit, the id of the
    item to start after, oldest first or not), and whether more follow."""
    limit, after, ascending = page
    with engine.connect() as connection:
        found = connection.execute(sa.select(T.input).where(_live(response_id, owner, now or datetime.now(UTC))))
        stored = found.scalar()
    if not isinstance(stored, list):
        raise _missing(response_id)
    listed = stored if ascending else stored[::-1]
    if after is not None:
        ids = [item.get("id") for item in listed]
        if after not in ids:
            raise InvalidRequest(f"after: no input item {after[:64]!r} in this response", param="after")
        listed = listed[ids.index(after) + 1 :]
    return listed[:limit], len(listed) > limit


@dataclass(frozen=True, slots=True)
class Bounds:
    """How far a `previous_response_id` chain may go (`responses.max_chain_turns`, `.max_chain_bytes`)."""

    turns: int
    bytes: int


def chain(
    engine: sa.Engine, owner: Owner, response_id: str, bounds: Bounds, now: datetime | None = None
) -> list[dict[str, Any]]:
    """The items a request continuing `response_id` is prepended: each stored turn's input then output items,
    oldest turn first. The response named must be the owner's and live, and so must every earlier one: else
    OpenAI's 400 `previous_response_not_found` (naming the link: the conversation cannot be rebuilt)."""
    at = now or datetime.now(UTC)
    turns: list[list[dict[str, Any]]] = []
    seen: set[str] = set()
    total = 0
    current: str | None = response_id
    with engine.connect() as connection:
        while current is not None:
            if current in seen or len(turns) >= bounds.turns:
                why = "loops" if current in seen else f"is longer than {bounds.turns} stored responses"
                raise InvalidRequest(f"previous_response_id: the conversation {why}", param="previous_response_id")
            seen.add(current)
            row = connection.execute(
                sa.select(T.previous_id, T.bytes, T.input, T.response).where(_live(current, owner, at))
            ).first()
            if row is None:
                raise _not_continued(response_id, current)
            total += int(row.bytes)
            if total > bounds.bytes:
                why = f"previous_response_id: the stored conversation is over {bounds.bytes} bytes"
                raise InvalidRequest(why, param="previous_response_id")
            output = row.response.get("output") if isinstance(row.response, dict) else None
            turns.append([*(row.input or []), *(output if isinstance(output, list) else [])])
            current = row.previous_id
    return [item for turn in reversed(turns) for item in turn]


def prune(engine: sa.Engine, now: datetime | None = None) -> int:
    """Delete expired responses; how many went."""
    with engine.begin() as connection:
        gone = connection.execute(stored_responses.delete().where(T.expires_at <= (now or datetime.now(UTC))))
    return int(gone.rowcount)
