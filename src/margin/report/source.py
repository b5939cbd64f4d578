"""Where a report query reads from: the hourly rollup when the window is whole hours (and the grouping is one
of its dimensions), else the ledger rows. Both give the same sums; the rollup reads ~1 row per hour and
dimension combination instead of one per request.

    src = source(window, dims=("feature",))
    sa.select(src.dim("feature"), src.m("requests"), src.m("cost_nanousd")).where(*src.where()).group_by(...)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from margin.errors import InvalidRequest
from margin.ledger import rollup
from margin.ledger.models import ledger, ledger_hourly
from margin.report.queries import Window, group_column

_SQLITE_FORMATS = {"hour": "%Y-%m-%dT%H:00:00", "day": "%Y-%m-%dT00:00:00"}
_ROLLUP_DIMS = {d: d for d in rollup.DIMENSIONS}
_RAW_SUMS = {name: sa.text(sql.format(r="ledger")) for name, sql in rollup.MEASURES.items()}


def time_bucket(connection: sa.Connection, bucket: str) -> sa.ColumnElement[str]:
    """The start of each ledger row's hour/day as ISO text (UTC), on SQLite and PostgreSQL."""
    if bucket not in _SQLITE_FORMATS:
        raise InvalidRequest(f"bucket must be hour or day, not {bucket!r}", param="bucket")
    if connection.dialect.name == "sqlite":
        return sa.func.strftime(_SQLITE_FORMATS[bucket], ledger.c.created_at)
    utc = sa.func.timezone("UTC", ledger.c.created_at)
    return sa.func.to_char(sa.func.date_trunc(bucket, utc), 'YYYY-MM-DD"T"HH24:MI:SS')


def _aligned(moment: datetime | None) -> bool:
    return moment is None or (moment.minute, moment.second, moment.microsecond) == (0, 0, 0)


def _hour_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:00:00")


@dataclass(frozen=True, slots=True)
class Source:
    window: Window
    rollup: bool

    @property
    def table(self) -> sa.TableClause | sa.Table:
        return ledger_hourly if self.rollup else ledger

    def where(self) -> list[sa.ColumnElement[bool]]:
        if not self.rollup:
            return self.window.where()
        clauses: list[sa.ColumnElement[bool]] = []
        if self.window.since is not None:
            clauses.append(ledger_hourly.c.hour >= _hour_text(self.window.since))
        if self.window.until is not None:
            clauses.append(ledger_hourly.c.hour < _hour_text(self.window.until))
        return clauses

    def dim(self, name: str) -> sa.ColumnElement[Any]:
        """A grouping column (NULL where the ledger has NULL)."""
        if not self.rollup:
            return group_column(name)
        return sa.func.nullif(ledger_hourly.c[_ROLLUP_DIMS[name]], sa.literal_column("''"))

    def m(self, name: str) -> sa.ColumnElement[Any]:
        """SUM of one of margin.ledger.rollup.MEASURES over the selected rows."""
        if self.rollup:
            return sa.func.sum(ledger_hourly.c[name])
        return sa.func.sum(sa.literal_column(str(_RAW_SUMS[name])))

    def first_at(self) -> sa.ColumnElement[Any]:
        return sa.func.min(ledger_hourly.c.first_at if self.rollup else ledger.c.created_at)

    def bucket(self, connection: sa.Connection, bucket: str) -> sa.ColumnElement[str]:
        """The ISO start of each row's hour or day (UTC)."""
        if not self.rollup:
            return time_bucket(connection, bucket)
        if bucket == "hour":
            return ledger_hourly.c.hour
        return sa.func.substr(ledger_hourly.c.hour, 1, 10, type_=sa.String) + "T00:00:00"


def source(window: Window, dims: tuple[str | None, ...] = ()) -> Source:
    """The rollup when the window is whole hours, rollups are on, no single key is asked for, and every
    grouping is a rollup dimension."""
    usable = window.key_id is None and all(d is None or d in _ROLLUP_DIMS for d in dims)
    whole_hours = _aligned(window.since) and _aligned(window.until)
    return Source(window, window.rollup and usable and whole_hours)
