"""Dashboard aggregates. Every query is scoped by a `Scope` (window + team/key filter) so a team key can
never read another team's rows. Sums follow `margin.report.queries` exactly (integer nano-USD in SQL, the
same row selection through its `Window`), so the numbers equal `margin report --json`. Latency percentiles
come from a histogram computed in SQL (values rounded to 0.1 ms), so no query ships every row to Python."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from margin.dashboard import rollup
from margin.economics.money import THOUSAND, from_nanousd, usd_str
from margin.ledger import rollup as ledger_rollup
from margin.ledger.models import ledger
from margin.report.queries import Window, group_column, parse_when

BREAKDOWNS = ("team", "feature", "customer", "model", "backend")
SINCE_CHOICES = ("24h", "7d", "30d")
PERCENTILES = (50, 95, 99)
WIDE_WINDOW = timedelta(days=3)


@dataclass(frozen=True, slots=True)
class Scope:
    """What one dashboard request may see: a time window and, for non-admin keys, one team (or one key). A
    team is one org's team (`org`, None for keys in no org): two orgs' teams `support` see only their own rows.
    The hourly rollup has no org, so team views read the ledger rows (through the team index)."""

    since: datetime | None
    until: datetime | None = None
    team: str | None = None
    key_id: str | None = None
    org: str | None = None  # with `team`: that team's org

    @classmethod
    def parse(cls, since: str, team: str | None = None, key_id: str | None = None, org: str | None = None) -> Scope:
        now = datetime.now(UTC)
        return cls(parse_when(since, now), None, team, key_id, org)

    def window(self) -> Window:
        return Window(self.since, self.until, self.key_id)

    def where(self, dialect: str = "") -> list[sa.ColumnElement[bool]]:
        """Window.where() (the report's row selection) plus the team filter. On SQLite, an admin's window of
        days reads the table in one sequential scan: walking ix_ledger_created_at over most of the table
        costs ~3x more (measured; `+created_at` keeps the planner off that index)."""
        if not (dialect == "sqlite" and self.wide):
            clauses = self.window().where()
        else:
            clauses = Window(None, self.until, self.key_id).where()
            if self.since is not None:
                unindexed = sa.literal_column("+ledger.created_at", type_=ledger.c.created_at.type)
                clauses.append(unindexed >= self.since)
        if self.team is not None:
            clauses.append(ledger.c.team == self.team)
            clauses.append(ledger.c.org.is_(None) if self.org is None else ledger.c.org == self.org)
        return clauses

    @property
    def wide(self) -> bool:
        """A window of days over every team: most of the table, better scanned than walked by index."""
        if self.team is not None or self.key_id is not None:
            return False
        return self.since is None or (self.until or datetime.now(UTC)) - self.since >= WIDE_WINDOW


def scan_key(column: Any, scope: Scope, dialect: str) -> Any:
    """A GROUP BY key that does not steer SQLite onto an index for a wide window (walking e.g. ix_ledger_team_created
    to save a sort reads the whole table in random order: ~3x slower than a scan plus a small sort, measured)."""
    if dialect == "sqlite" and scope.wide and isinstance(column, sa.Column):
        return sa.literal_column(f"+{column.table.name}.{column.name}", type_=column.type)
    return column


def _sum(column: Any) -> Any:
    return sa.func.coalesce(sa.func.sum(column), 0)


def _count_if(condition: Any) -> Any:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


def sums() -> list[Any]:
    """SUM_LABELS over ledger rows, each by the rollup's own per-row definition (margin.ledger.rollup.MEASURES),
    so the rows and the rollup paths add up the same things by construction."""
    return [
        sa.func.coalesce(sa.func.sum(sa.literal_column(_row_measure(rollup.MEASURES[label]))), 0).label(label)
        for label in SUM_LABELS
    ]


def _row_measure(measure: str) -> str:
    return f"({ledger_rollup.MEASURES[measure].format(r='ledger')})"


SUM_LABELS = (
    "requests", "errors", "input_tokens", "output_tokens", "cost_nanousd", "unpriced", "priced_tokens",
    "energy_j", "co2e_g", "cache_hits", "cache_saved_nanousd", "routing_saved_nanousd", "routed",
)  # fmt: skip


def raw_sums(row: Any) -> dict[str, Any]:
    """The additive sums of one result row (ints; energy and carbon floats)."""
    mapping = row._mapping
    return {label: mapping[label] or 0 for label in SUM_LABELS}


def add_up(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals of grouped sums: every column of sums() is additive, so no second scan is needed."""
    total: dict[str, Any] = dict.fromkeys(SUM_LABELS, 0)
    total["energy_j"] = total["co2e_g"] = 0.0
    for part in parts:
        for label in SUM_LABELS:
            total[label] += part[label]
    return total


def figures(raw: dict[str, Any]) -> dict[str, Any]:
    """The same figures (and rounding) as `margin report --json`, minus latency, plus `routed_requests`."""
    cost = from_nanousd(int(raw["cost_nanousd"]))
    priced_tokens = int(raw["priced_tokens"])
    per_1k = cost / Decimal(priced_tokens) * THOUSAND if priced_tokens else None
    return {
        "requests": int(raw["requests"]),
        "errors": int(raw["errors"]),
        "input_tokens": int(raw["input_tokens"]),
        "output_tokens": int(raw["output_tokens"]),
        "cost_usd": usd_str(cost),
        "unpriced_requests": int(raw["unpriced"]),
        "usd_per_1k_tokens": usd_str(per_1k),
        "energy_j": round(float(raw["energy_j"]), 6),
        "co2e_g": round(float(raw["co2e_g"]), 9),
        "cache_hits": int(raw["cache_hits"]),
        "cache_saved_usd": usd_str(from_nanousd(int(raw["cache_saved_nanousd"]))),
        "routing_saved_usd": usd_str(from_nanousd(int(raw["routing_saved_nanousd"]))),
        "routed_requests": int(raw["routed"]),
    }


def key_expression(by: str, dialect: str) -> Any:
    if by in ("hour", "day"):
        return bucket_expression(dialect, by == "hour")
    return group_column(by)


def ledger_grouped(connection: sa.Connection, scope: Scope, by: str) -> list[tuple[Any, dict[str, Any]]]:
    """One scan of the ledger: (key, additive sums) per group."""
    dialect = connection.dialect.name
    key = scan_key(key_expression(by, dialect), scope, dialect).label("key")
    query = sa.select(key, *sums()).where(*scope.where(dialect)).group_by(key)
    return [(row.key, raw_sums(row)) for row in connection.execute(query)]


def grouped(connection: sa.Connection, scope: Scope, by: str) -> list[tuple[Any, dict[str, Any]]]:
    """(key, additive sums) per group, from the hourly rollup when it exists and can answer, else the ledger."""
    if rollup.available(connection, scope, by):
        return rollup.grouped(connection, scope, by, lambda part: ledger_grouped(connection, part, by))
    return ledger_grouped(connection, scope, by)


def breakdown(connection: sa.Connection, scope: Scope, by: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Groups (sorted like the report: cost, then requests, then key) and the window's totals, in one scan."""
    parts = grouped(connection, scope, by)
    groups = [{"key": key, **figures(raw)} for key, raw in parts]
    groups.sort(key=lambda g: (-Decimal(g["cost_usd"]), -g["requests"], str(g["key"])))
    return groups, figures(add_up([raw for _, raw in parts]))


def bucket_expression(dialect: str, hourly: bool) -> Any:
    """The UTC hour (`YYYY-MM-DD HH`) or day (`YYYY-MM-DD`) of a row, as text, on SQLite or Postgres."""
    if dialect == "sqlite":  # SQLAlchemy stores naive UTC text: `2026-11-26 08:15:00.123456`
        return sa.func.substr(ledger.c.created_at, 1, 13 if hourly else 10)
    utc = sa.func.timezone("UTC", ledger.c.created_at)
    return sa.func.to_char(utc, "YYYY-MM-DD HH24" if hourly else "YYYY-MM-DD")


def trend(connection: sa.Connection, scope: Scope, hourly: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Points per hour or day and the window's totals, in one scan."""
    parts = sorted(grouped(connection, scope, "hour" if hourly else "day"), key=lambda part: str(part[0]))
    points = [
        {
            "bucket": bucket,
            "requests": int(raw["requests"]),
            "cost_usd": usd_str(from_nanousd(int(raw["cost_nanousd"]))),
            "tokens": int(raw["input_tokens"]) + int(raw["output_tokens"]),
            "errors": int(raw["errors"]),
        }
        for bucket, raw in parts
    ]
    return points, figures(add_up([raw for _, raw in parts]))


def _histogram_percentiles(counts: list[tuple[float, int]]) -> dict[str, float | None]:
    """Nearest-rank percentiles (as in report.queries.percentile) from sorted (value, count) pairs."""
    total = sum(n for _, n in counts)
    out: dict[str, float | None] = {}
    for q in PERCENTILES:
        if not total:
            out[f"p{q}"] = None
            continue
        rank, seen = max(1, min(total, round(q / 100 * total + 0.5))), 0
        for value, n in counts:
            seen += n
            if seen >= rank:
                out[f"p{q}"] = value
                break
    return out


def _three_digits(column: Any) -> Any:
    """A latency rounded to 3 significant digits (0.1 ms below 100 ms, 1 ms below 1 s, …): at most ~4,000
    distinct values per model whatever the row count, and percentiles within 0.5 % of the exact ones."""
    number = sa.cast(column, sa.Numeric)
    return sa.case(
        (column < 100, sa.func.round(number, 1)),
        (column < 1000, sa.func.round(number, 0)),
        (column < 10000, sa.func.round(number / 10, 0) * 10),
        (column < 100000, sa.func.round(number / 100, 0) * 100),
        else_=sa.func.round(number / 1000, 0) * 1000,
    )


def _latency_histogram(
    connection: sa.Connection, scope: Scope, column: Any
) -> dict[str | None, list[tuple[float, int]]]:
    value = _three_digits(column).label("value")
    model = scan_key(ledger.c.model, scope, connection.dialect.name).label("model")
    query = (
        sa.select(model, value, sa.func.count().label("n"))
        .where(*scope.where(connection.dialect.name), column.is_not(None))
        .group_by(model, value)
        .order_by(model, value)
    )
    found: dict[str | None, list[tuple[float, int]]] = {}
    for row in connection.execute(query):
        found.setdefault(row.model, []).append((float(row.value), int(row.n)))
    return found


def latency(connection: sa.Connection, scope: Scope) -> dict[str, Any]:
    e2e = _latency_histogram(connection, scope, ledger.c.e2e_ms)
    ttft = _latency_histogram(connection, scope, ledger.c.ttft_ms)
    models: list[dict[str, Any]] = []
    for model in sorted(set(e2e) | set(ttft), key=str):
        models.append(
            {
                "model": model,
                "requests": sum(n for _, n in e2e.get(model, [])),
                "e2e_ms": _histogram_percentiles(e2e.get(model, [])),
                "ttft_ms": _histogram_percentiles(ttft.get(model, [])),
            }
        )
    failures = errors(connection, scope)
    requests = sum(n for counts in e2e.values() for _, n in counts)
    failed = sum(int(e["requests"]) for e in failures)
    rate = round(failed / requests * 100, 3) if requests else None
    totals = {"requests": requests, "errors": failed, "error_rate_pct": rate}
    return {"models": models, "errors": failures, "totals": totals}


def errors(connection: sa.Connection, scope: Scope) -> list[dict[str, Any]]:
    dialect = connection.dialect.name
    status = scan_key(ledger.c.http_status, scope, dialect).label("http_status")
    code = scan_key(ledger.c.error_code, scope, dialect).label("error_code")
    query = (
        sa.select(status, code, sa.func.count().label("n"))
        .where(*scope.where(dialect), ledger.c.http_status >= 400)
        .group_by(status, code)
        .order_by(sa.func.count().desc())
    )
    return [
        {"http_status": int(row.http_status), "error_code": row.error_code, "requests": int(row.n)}
        for row in connection.execute(query)
    ]


def _ledger_backends(connection: sa.Connection, scope: Scope) -> list[tuple[Any, dict[str, Any]]]:
    backend = scan_key(ledger.c.backend, scope, connection.dialect.name).label("key")
    query = (
        sa.select(
            backend,
            sa.func.count().label("requests"),
            _count_if(ledger.c.http_status >= 400).label("errors"),
            _sum(ledger.c.cost_nanousd).label("cost_nanousd"),
            sa.func.coalesce(sa.func.sum(sa.func.coalesce(ledger.c.busy_ms, ledger.c.backend_ms)), 0.0).label(
                "busy_ms"
            ),
            _sum(ledger.c.input_tokens).label("input_tokens"),
            _sum(ledger.c.output_tokens).label("output_tokens"),
        )
        .where(*scope.where(connection.dialect.name), ledger.c.kind == "request")
        .group_by(backend)
    )
    return [(row.key, dict(row._mapping)) for row in connection.execute(query)]


def backend_usage(connection: sa.Connection, scope: Scope) -> list[dict[str, Any]]:
    """Per backend (cache hits excluded): requests, errors, spend and Σ busy time (the backend's own busy time
    where the ledger has it, else the time margin waited on it: the rollup's `busy_ms`)."""
    if rollup.available(connection, scope, "backend"):
        parts = rollup.grouped(
            connection, scope, "backend", lambda part: _ledger_backends(connection, part), request_only=True
        )
    else:
        parts = _ledger_backends(connection, scope)
    return [
        {
            "backend": key,
            "requests": int(raw["requests"]),
            "errors": int(raw["errors"]),
            "cost_usd": usd_str(from_nanousd(int(raw["cost_nanousd"]))),
            "tokens": int(raw["input_tokens"]) + int(raw["output_tokens"]),
            "busy_s": round(float(raw["busy_ms"]) / 1000, 3),
        }
        for key, raw in parts
    ]


def window_seconds(scope: Scope, connection: sa.Connection) -> float:
    """Length of the window; for an open start, from the first row in scope to now."""
    end = scope.until or datetime.now(UTC)
    start = scope.since
    if start is None:
        first = connection.execute(
            sa.select(sa.func.min(ledger.c.created_at)).where(*scope.where(connection.dialect.name))
        ).scalar()
        if first is None:
            return 0.0
        start = first if first.tzinfo else first.replace(tzinfo=UTC)
    return max(0.0, (end - start).total_seconds())


def burn(spent: int, start: datetime | None, end: datetime | None, limit: int, now: datetime) -> dict[str, Any]:
    """Burn rate per day over the elapsed part of a budget window and when, at that rate, it runs out."""
    if start is None:
        return {"per_day": None, "exhausts_at": None}
    elapsed_days = Decimal(str(max((now - start).total_seconds(), 60.0))) / Decimal(86400)
    per_day = Decimal(spent) / elapsed_days
    exhausts = None
    if per_day > 0:
        left_days = Decimal(max(limit - spent, 0)) / per_day
        moment = now + timedelta(days=float(left_days))  # a date, not money
        if end is None or moment < end:
            exhausts = moment.isoformat(timespec="minutes")
    return {"per_day": per_day, "exhausts_at": exhausts}


def budget_spent(
    connection: sa.Connection,
    kind: str,
    value: str | None,
    usd: bool,
    start: datetime | None,
    end: datetime | None,
    org: tuple[str | None] | None = None,
) -> int:
    """What the ledger says a budget's window spent (nano-USD or tokens), in SQL, with the same row selection
    and scope matching as governance.service.ledger_spent (which reconciles the live counters). Budget windows
    start on whole hours, so global/team/model budgets are read exactly from the hourly rollup when it exists."""
    if org is None and rollup.answers_budget(connection, kind):  # `org`: (one org's counter,) — not in the rollup
        return rollup.budget_spent(connection, kind, value, usd, start, end)
    measure = ledger.c.cost_nanousd if usd else ledger.c.input_tokens + ledger.c.output_tokens
    clauses: list[sa.ColumnElement[bool]] = [ledger.c.kind == "request"]
    if start is not None and end is not None:
        created: Any = ledger.c.created_at
        if connection.dialect.name == "sqlite" and kind in ("global", "tag"):  # most of the table: scan it
            created = sa.literal_column("+ledger.created_at", type_=ledger.c.created_at.type)
        clauses += [created >= start.astimezone(UTC), created < end.astimezone(UTC)]
    if kind == "tag":
        name, _, tag_value = (value or "").partition("=")
        clauses.append(ledger.c.tags[name].as_string() == tag_value)
    elif kind != "global":
        clauses.append(ledger.c[{"key": "key_id"}.get(kind, kind)] == value)
    if org is not None:
        clauses.append(ledger.c.org.is_(None) if org[0] is None else ledger.c.org == org[0])
    return int(connection.execute(sa.select(_sum(measure)).where(*clauses)).scalar_one())
