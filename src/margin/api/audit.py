"""The admin API's side of the audit log (margin.ledger.audit): who a request is (`origin`), the record of a
denied or failed attempt, and `GET /admin/audit`.

Denied attempts (no key, a bad key, a key that is no admin's, on a mutating `/admin/*` route) are recorded, but
an unauthenticated flood must not grow the table without limit: each process records at most
`audit.denied_per_minute` of them per client address and `audit.denied_total_per_minute` in all per UTC
minute; the attempts it skipped are counted in the next row it writes (`after.skipped_before`)."""

from __future__ import annotations

import base64
import binascii
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from starlette.requests import Request

from margin.api.edge import known_query
from margin.errors import InvalidRequest
from margin.ledger import audit
from margin.ledger.read.window import parse_span
from margin.report.queries import parse_limit
from margin.types import Principal

log = logging.getLogger("margin")

MAX_PAGE = 500
DEFAULT_PAGE = 100
MAX_FILTER = 256
CURSOR_PREFIX = b"audit:"


@dataclass(slots=True)
class DeniedWrites:
    """How many denied attempts this process recorded in the current minute, per address and in all."""

    per_address: int
    total: int
    minute: int = -1
    counts: dict[str, int] = field(default_factory=dict)  # at most `total` addresses: only admitted ones
    skipped: int = 0

    def admit(self, address: str, minute: int) -> int | None:
        """None: do not record this one; else how many were skipped since the last recorded one."""
        if minute != self.minute:
            self.minute, self.counts = minute, {}
        seen = self.counts.get(address, 0)
        if seen >= self.per_address or sum(self.counts.values()) >= self.total:
            self.skipped += 1
            return None
        self.counts[address] = seen + 1
        skipped, self.skipped = self.skipped, 0
        return skipped


def address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def origin(request: Request, principal: Principal | None) -> audit.Origin:
    """The caller of an admin request as the audit log names it."""
    if principal is None:
        actor, name = "unauthenticated", None
    elif principal.key_id is None:
        actor, name = "open", None  # no keys exist: the gateway listens on loopback only
    else:
        actor, name = f"key:{principal.key_id}", principal.name
    request_id = getattr(request.state, "request_id", None)
    return audit.Origin(actor, "http", name, address(request), request_id)


def target(request: Request) -> str | None:
    params = request.path_params
    found = params.get("key_id") or params.get("name")
    return None if found is None else str(found)


async def attempt(
    request: Request, principal: Principal | None, change: audit.Change, since: datetime | None = None
) -> None:
    """Record a denied (no admin key) or failed (refused by the change itself) attempt; never raises: the caller
    answers with its error either way. Denied ones within `DeniedWrites`' bounds only. `since` (when the request
    began): only if the request has no row yet (a crash after the change was made and recorded)."""
    services = request.app.state.services
    if change.outcome == "denied":
        skipped = services.audit_denials.admit(address(request), int(time.time() // 60))
        if skipped is None:
            return
        change = replace(change, after={**(change.after or {}), "skipped_before": skipped})
    who, engine = origin(request, principal), services.sync_engine()
    try:
        if since is None:
            await services.read(audit.write, engine, who, change)
        else:
            await services.read(audit.write_unrecorded, engine, who, change, since)
    except Exception:
        log.exception("the audit log did not record a %s %s", change.outcome, change.action)


def _text(params: Any, name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not (0 < len(value) <= MAX_FILTER and value.isprintable()):
        raise InvalidRequest(f"{name}: 1 to {MAX_FILTER} printable characters", param=name)
    return str(value)


def cursor_of(row_id: int) -> str:
    return base64.urlsafe_b64encode(CURSOR_PREFIX + str(row_id).encode()).decode()


def _cursor(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(value.encode("ascii")) if len(value) <= 64 else b""
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raw = b""
    number = raw.removeprefix(CURSOR_PREFIX)
    if not raw.startswith(CURSOR_PREFIX) or not number.isdigit() or len(number) > 18:
        raise InvalidRequest("cursor: not a cursor this endpoint gave", param="cursor")
    return int(number)


FILTERS = frozenset({"action", "actor", "target", "since", "until", "cursor", "limit"})


def filters(params: Any) -> audit.Filters:
    """`GET /admin/audit`'s query, validated (a bad value is a 400 naming it)."""
    known_query(params, FILTERS)
    action = _text(params, "action")
    if action is not None and action not in audit.ACTIONS:
        raise InvalidRequest(f"action: one of {', '.join(audit.ACTIONS)}", param="action")
    since, until = parse_span(params.get("since"), params.get("until"))
    return audit.Filters(
        action, _text(params, "actor"), _text(params, "target"), since, until, _cursor(params.get("cursor")),
        parse_limit(params.get("limit"), DEFAULT_PAGE, MAX_PAGE),
    )  # fmt: skip


async def list_entries(request: Request, _: Principal) -> Any:
    """`GET /admin/audit`: newest first; `next_cursor` pages on (null: no more)."""
    services = request.app.state.services
    wanted = filters(request.query_params)
    rows = await services.read(audit.page, services.sync_engine(), wanted)
    more = len(rows) == wanted.limit
    return {"data": rows, "next_cursor": cursor_of(rows[-1]["id"]) if more and rows else None}
