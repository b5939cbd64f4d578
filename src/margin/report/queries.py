"""Ledger aggregates. Sums run in SQL (money as integer nano-USD, exact); latency percentiles are computed
from the rows of the window (fine up to a few million rows; rollups arrive with the reporting work)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from margin.economics.money import THOUSAND, from_nanousd, usd_str
from margin.errors import InvalidRequest
from margin.ledger.models import ledger

GROUPS = ("model", "team", "feature", "customer", "backend", "key", "user", "endpoint", "status", "region")
_RELATIVE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(value: str | None, now: datetime | None = None) -> datetime | None:
    """`24h`, `7d`, `30m`, `2w` (ago), or an ISO date/time (UTC unless it says otherwise)."""
    if not value:
        return None
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(value.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidRequest(f"{value!r} is neither a duration like 24h/7d nor an ISO date") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def group_column(by: str) -> sa.ColumnElement[Any]:
    if by in ("feature", "customer"):
        tag: sa.ColumnElement[Any] = ledger.c.tags[by].as_string()
        return tag
    column = {"key": "key_id"}.get(by, by)
    if by not in GROUPS:
        raise InvalidRequest(f"cannot group by {by!r}; choose one of {', '.join(GROUPS)}")
    return ledger.c[column]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return None
    rank = max(1, min(len(values), round(q / 100 * len(values) + 0.5)))
    return values[rank - 1]


@dataclass(frozen=True, slots=True)
class Window:
    since: datetime | None = None
    until: datetime | None = None
    key_id: str | None = None  # only this key's rows (a caller reading its own usage)

    def where(self) -> list[sa.ColumnElement[bool]]:
        clauses: list[sa.ColumnElement[bool]] = [ledger.c.kind.in_(("request", "cache_hit"))]
        if self.key_id is not None:
            clauses.append(ledger.c.key_id == self.key_id)
        if self.since is not None:
            clauses.append(ledger.c.created_at >= self.since)
        if self.until is not None:
            clauses.append(ledger.c.created_at < self.until)
        return clauses


def _sums(key: sa.ColumnElement[Any] | None) -> list[Any]:
    priced = ledger.c.cost_nanousd.is_not(None)
    tokens = ledger.c.input_tokens + ledger.c.output_tokens
    columns: list[Any] = [
        sa.func.count().label("requests"),
        sa.func.sum(sa.case((ledger.c.http_status >= 400, 1), else_=0)).label("errors"),
        sa.func.coalesce(sa.func.sum(ledger.c.input_tokens), 0).label("input_tokens"),
        sa.func.coalesce(sa.func.sum(ledger.c.output_tokens), 0).label("output_tokens"),
        sa.func.coalesce(sa.func.sum(ledger.c.cost_nanousd), 0).label("cost_nanousd"),
        sa.func.sum(sa.case((priced, 0), else_=1)).label("unpriced"),
        sa.func.coalesce(sa.func.sum(sa.case((priced, tokens), else_=0)), 0).label("priced_tokens"),
        sa.func.coalesce(sa.func.sum(ledger.c.energy_j), 0.0).label("energy_j"),
        sa.func.coalesce(sa.func.sum(ledger.c.co2e_g), 0.0).label("co2e_g"),
        sa.func.sum(sa.case((ledger.c.kind == "cache_hit", 1), else_=0)).label("cache_hits"),
        sa.func.coalesce(sa.func.sum(ledger.c.saved_nanousd), 0).label("cache_saved_nanousd"),
        sa.func.coalesce(sa.func.sum(ledger.c.counterfactual_nanousd - ledger.c.cost_nanousd), 0).label(
            "routing_saved_nanousd"
        ),
    ]
    return [key.label("key"), *columns] if key is not None else columns


def _figures(row: Any, latencies: list[float], ttfts: list[float]) -> dict[str, Any]:
    cost = from_nanousd(int(row.cost_nanousd))
    per_1k = cost / Decimal(row.priced_tokens) * THOUSAND if row.priced_tokens else None
    return {
        "requests": int(row.requests),
        "errors": int(row.errors or 0),
        "input_tokens": int(row.input_tokens),
        "output_tokens": int(row.output_tokens),
        "cost_usd": usd_str(cost),
        "unpriced_requests": int(row.unpriced or 0),
        "usd_per_1k_tokens": usd_str(per_1k),
        "energy_j": round(float(row.energy_j), 6),
        "co2e_g": round(float(row.co2e_g), 9),
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p95_ms": percentile(latencies, 95),
        "ttft_p50_ms": percentile(ttfts, 50),
        "cache_hits": int(row.cache_hits or 0),
        "cache_saved_usd": usd_str(from_nanousd(int(row.cache_saved_nanousd))),
        "routing_saved_usd": usd_str(from_nanousd(int(row.routing_saved_nanousd))),
    }


def _latencies(connection: sa.Connection, window: Window, key: Any) -> dict[Any, tuple[list[float], list[float]]]:
    columns = [key.label("key")] if key is not None else [sa.literal(None).label("key")]
    query = sa.select(*columns, ledger.c.e2e_ms, ledger.c.ttft_ms).where(*window.where())
    found: dict[Any, tuple[list[float], list[float]]] = {}
    for row in connection.execute(query):
        e2e, ttft = found.setdefault(row.key, ([], []))
        e2e.append(float(row.e2e_ms))
        if row.ttft_ms is not None:
            ttft.append(float(row.ttft_ms))
    for e2e, ttft in found.values():
        e2e.sort()
        ttft.sort()
    return found


def summarize(engine: sa.Engine, window: Window, by: str | None = None) -> dict[str, Any]:
    key = group_column(by) if by else None
    with engine.connect() as connection:
        total = connection.execute(sa.select(*_sums(None)).where(*window.where())).one()
        overall = _latencies(connection, window, None).get(None, ([], []))
        groups: list[dict[str, Any]] = []
        if key is not None:
            per_key = _latencies(connection, window, key)
            query = sa.select(*_sums(key)).where(*window.where()).group_by(key)
            for row in connection.execute(query):
                lat, ttft = per_key.get(row.key, ([], []))
                groups.append({"key": row.key, **_figures(row, lat, ttft)})
    groups.sort(key=lambda g: (-Decimal(g["cost_usd"]), -g["requests"], str(g["key"])))
    return {
        "since": window.since.isoformat() if window.since else None,
        "until": window.until.isoformat() if window.until else None,
        "by": by,
        "totals": _figures(total, *overall),
        "groups": groups,
    }
