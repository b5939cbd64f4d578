"""What a read covers: a time window and who may see it (every team, one team, or one key)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from margin.errors import InvalidRequest
from margin.ledger.measures import KINDS
from margin.ledger.models import api_keys, ledger

_RELATIVE = re.compile(r"^(\d{1,9})([mhdw])$")  # more than 9 digits is more than datetime holds
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
LATEST = datetime(9999, 12, 31, tzinfo=UTC)
"""The last moment a window may name: the planner rounds a bound up to its whole day (margin.ledger.read.plan),
which past this is no datetime."""


def parse_when(value: str | None, now: datetime | None = None) -> datetime | None:
    """`24h`, `7d`, `30m`, `2w` (ago), or an ISO date/time (UTC unless it says otherwise)."""
    if not value:
        return None
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(value.strip())
    try:
        if match:
            return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        parsed = datetime.fromisoformat(value)
        moment = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except ValueError as exc:
        raise InvalidRequest(f"{value[:40]!r} is neither a duration like 24h/7d nor an ISO date") from exc
    except OverflowError as exc:  # 999999999w ago, or 0001-01-01 at +14:00 (before year 1 in UTC)
        raise InvalidRequest(f"{value[:40]!r} is outside the dates this gateway reads") from exc
    if moment > LATEST:
        raise InvalidRequest(f"{value[:40]!r} is outside the dates this gateway reads (up to {LATEST.date()})")
    return moment


def parse_span(
    since: str | None, until: str | None, now: datetime | None = None
) -> tuple[datetime | None, datetime | None]:
    """`--since` and `--until` parsed; one that ends before it starts is an error, not an empty answer."""
    now = now or datetime.now(UTC)
    start, end = _named_when("since", since, now), _named_when("until", until, now)
    if start is not None and end is not None and end < start:
        raise InvalidRequest(
            f"until ({end.isoformat()}) is before since ({start.isoformat()}): the window would be empty"
        )
    return start, end


def _named_when(name: str, value: str | None, now: datetime) -> datetime | None:
    """`parse_when`, a refusal naming which bound it was (`param`, and in its message)."""
    try:
        return parse_when(value, now)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{name}: {exc.message}", param=name) from exc


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; the ledger writes UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Window:
    """[since, until) in UTC (None: open), optionally one team's or one key's rows. `rollup=False` makes every
    read add up ledger rows (tests compare both paths; the answers are equal). `org` narrows to one org's rows
    ((that org,), or (None,) for rows of keys in no org): two orgs' teams of one name are different teams.
    Only the hourly rollup has an org column, so an org-narrowed read adds up ledger rows."""

    since: datetime | None = None
    until: datetime | None = None
    team: str | None = None  # rows of this team only (a team key's view)
    key_id: str | None = None  # rows of this key only (a caller reading its own usage)
    rollup: bool = True
    org: tuple[str | None] | None = None  # rows of this org only (None: every org)

    def __post_init__(self) -> None:  # compare in UTC: SQLite stores naive UTC text
        for name in ("since", "until"):
            moment = getattr(self, name)
            if moment is not None:
                object.__setattr__(self, name, as_utc(moment).astimezone(UTC))

    @property
    def partial(self) -> bool:
        """One team's, key's or org's rows, not the whole operator's: what they all share (a self-hosted
        backend's idle time, per-seat revenue, revenue with no traffic) is not theirs to be shown or attributed."""
        return self.team is not None or self.key_id is not None or self.org is not None

    def where(self, table: Any = ledger, kinds: tuple[str, ...] = KINDS) -> list[sa.ColumnElement[bool]]:
        """The ledger rows of the window (traffic kinds only)."""
        clauses: list[sa.ColumnElement[bool]] = [table.c.kind.in_(kinds)]
        if self.key_id is not None:
            clauses.append(table.c.key_id == self.key_id)
        if self.team is not None:
            clauses.append(table.c.team == self.team)
        if self.org is not None:
            clauses.append(table.c.org.is_(None) if self.org[0] is None else table.c.org == self.org[0])
        if self.since is not None:
            clauses.append(table.c.created_at >= self.since)
        if self.until is not None:
            clauses.append(table.c.created_at < self.until)
        return clauses

    def between(self, since: datetime | None, until: datetime | None) -> Window:
        return replace(self, since=since, until=until)

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }

    def seconds(self, first: datetime | None, now: datetime) -> float:
        """The window's length so far; an open start begins at `first` (the first row in it), an open end or one
        after now is now (a month asked on its 8th was its 30 days: seats prorated over days still to come)."""
        start = self.since or (as_utc(first) if first is not None else None)
        if start is None:
            return 0.0
        end = min(self.until, now) if self.until is not None else now
        return max(0.0, (end - start).total_seconds())


def team_org(connection: sa.Connection, team: str, org: tuple[str | None]) -> tuple[str | None] | None:
    """The org narrowing a read of `team` needs: `org` when a key of another org has a team of that name (two
    orgs' teams of one name are different teams), else None, so the team's reads can use the rollups (which,
    but for the hourly one, have no org column). Keys are never deleted, only revoked: every team a row can
    carry is there."""
    wanted = org[0]
    other = (
        api_keys.c.org.is_not(None) if wanted is None else sa.or_(api_keys.c.org.is_(None), api_keys.c.org != wanted)
    )
    query = sa.select(api_keys.c.id).where(api_keys.c.team == team, other).limit(1)
    return org if connection.execute(query).first() is not None else None


def team_orgs(connection: sa.Connection, team: str) -> list[str | None]:
    """The orgs that have a team of this name (None: keys in no org), sorted, no org first."""
    found = connection.execute(sa.select(api_keys.c.org).where(api_keys.c.team == team).distinct())
    return sorted((row[0] for row in found), key=lambda org: (org is not None, org or ""))


def scoped(connection: sa.Connection, window: Window, team: str | None, org: str | None) -> Window:
    """An operator's window of one org (`org`, "" for keys in no org), one team, or one org's team (`margin
    report --org/--team`), as that team's keys see it on the dashboard. A team named in several orgs is
    refused without an org: adding up different orgs' teams is nobody's view."""
    wanted: tuple[str | None] | None = None if org is None else (org or None,)
    if team is None:
        return replace(window, org=wanted)
    if wanted is not None:
        return replace(window, team=team, org=team_org(connection, team, wanted))
    orgs = team_orgs(connection, team)
    if len(orgs) > 1:
        names = ", ".join("(no org: --org '')" if name is None else repr(name) for name in orgs)
        raise InvalidRequest(f"team {team!r} is a team of {len(orgs)} orgs: {names}; name one with --org", param="org")
    return replace(window, team=team)
