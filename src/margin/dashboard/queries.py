"""The dashboard's figures, rendered from margin.ledger.read (no SQL here). Every read is scoped by a
`read.Window` that carries the viewer's team (or key), so a team key never reads another team's rows. Sums
are those of `margin report --json` (the same read model, the same `figures`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from margin.economics.money import from_nanousd, usd_str
from margin.ledger import read
from margin.ledger.read import Window
from margin.ledger.read.latency import from_histogram
from margin.report.queries import GROUP_LIMIT
from margin.report.queries import figures as report_figures

NO_END_HORIZON_S = 100 * 365.25 * 86400  # a budget with no end (lifetime) runs out "never" beyond a century

BREAKDOWNS = ("team", "feature", "customer", "model", "backend")
SINCE_CHOICES = ("24h", "7d", "30d")
PERCENTILES = (50, 95, 99)


def window_for(
    since: str, team: str | None = None, key_id: str | None = None, org: tuple[str | None] | None = None
) -> Window:
    """What one dashboard request may see: `since` ago until now, one team's (or one key's) rows for
    non-admin viewers; a team view is one org's team (`org`: (that org,), (None,) for keys in no org)."""
    return Window(read.parse_when(since, datetime.now(UTC)), None, team, key_id, org=org)


def figures(sums: read.Sums) -> dict[str, Any]:
    """The report's figures plus `routed_requests`."""
    return {**report_figures(sums), "routed_requests": sums["routed"]}


def breakdown(
    connection: sa.Connection, window: Window, by: str, limit: int = GROUP_LIMIT
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any]]:
    """The first `limit` groups (ranked like the report: cost, then requests, then key), the rest added up
    (None when none were left out), and the window's totals."""
    kept, count, rest = read.top(connection, window, by, limit)
    others = {"groups": count - len(kept), **figures(rest)} if count > len(kept) else None
    every = read.total([rest, *(sums for _, sums in kept)])
    return [{"key": key, **figures(sums)} for key, sums in kept], others, figures(every)


def trend(connection: sa.Connection, window: Window, hourly: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Points per hour or day (`bucket`: the ISO start, UTC) and the window's totals."""
    parts = read.grouped(connection, window, "hour" if hourly else "day")
    points = [
        {
            "bucket": bucket,
            "requests": sums["requests"],
            "cost_usd": usd_str(from_nanousd(sums["cost_nanousd"])),
            "tokens": sums["input_tokens"] + sums["output_tokens"],
            "errors": sums["errors"],
        }
        for bucket, sums in sorted(parts.items(), key=lambda part: str(part[0]))
    ]
    return points, figures(read.total(parts.values()))


def _percentiles(histogram: dict[int, int]) -> dict[str, float | None]:
    return {f"p{q}": from_histogram(histogram, q) for q in PERCENTILES}


def latency(connection: sa.Connection, window: Window) -> dict[str, Any]:
    """Per model: p50/p95/p99 of e2e and TTFT from the latency histograms (±4.43 %); errors by status."""
    e2e = read.histograms(connection, window, "model", "e2e")
    ttft = read.histograms(connection, window, "model", "ttft")
    models = [
        {
            "model": model,
            "requests": sum(e2e.get(model, {}).values()),
            "e2e_ms": _percentiles(e2e.get(model, {})),
            "ttft_ms": _percentiles(ttft.get(model, {})),
        }
        for model in sorted(set(e2e) | set(ttft), key=str)
    ]
    failures = errors(connection, window)
    requests = sum(m["requests"] for m in models)
    failed = sum(int(e["requests"]) for e in failures)
    rate = round(failed / requests * 100, 3) if requests else None
    return {
        "models": models,
        "errors": failures,
        "totals": {"requests": requests, "errors": failed, "error_rate_pct": rate},
    }


def errors(connection: sa.Connection, window: Window) -> list[dict[str, Any]]:
    """Failed requests per (HTTP status, error code), most frequent first."""
    out = []
    for key, sums in read.grouped(connection, window, "error").items():
        status, _, code = str(key).partition(" ")
        if sums["errors"]:
            out.append({"http_status": int(status), "error_code": code or None, "requests": sums["errors"]})
    return sorted(out, key=lambda e: (-e["requests"], e["http_status"], str(e["error_code"])))


def backend_usage(connection: sa.Connection, window: Window) -> list[dict[str, Any]]:
    """Per backend (cache hits are no backend call): requests, errors, spend, tokens and Σ busy time (the
    backend's own busy time where the ledger has it, else the time margin waited on it)."""
    found = read.grouped(connection, window, "backend", kinds=("request",))
    return [
        {
            "backend": key,
            "requests": s["requests"],
            "errors": s["errors"],
            "cost_usd": usd_str(from_nanousd(s["cost_nanousd"])),
            "tokens": s["input_tokens"] + s["output_tokens"],
            "busy_s": round(s["busy_us"] / 1_000_000, 3),
        }
        for key, s in found.items()
    ]


def window_seconds(connection: sa.Connection, window: Window) -> float:
    """Length of the window; for an open start, from the first row in scope to now."""
    first = read.first_at(connection, window).get(None) if window.since is None else None
    return window.seconds(first, datetime.now(UTC))


def burn(spent: int, start: datetime | None, end: datetime | None, limit: int, now: datetime) -> dict[str, Any]:
    """Burn rate per day over the elapsed part of a budget window and when, at that rate, it runs out."""
    if start is None:
        return {"per_day": None, "exhausts_at": None}
    elapsed_days = Decimal(str(max((now - start).total_seconds(), 60.0))) / Decimal(86400)
    per_day = Decimal(spent) / elapsed_days
    exhausts = None
    if per_day > 0:
        left_s = Decimal(max(limit - spent, 0)) / per_day * 86400
        # only a moment before the window ends (or, with no end, within a century) is a date: a cap far above
        # the spend would overflow datetime (a 500 for every viewer of the budgets page)
        horizon = (end - now).total_seconds() if end is not None else NO_END_HORIZON_S
        if left_s < Decimal(str(horizon)):
            exhausts = (now + timedelta(seconds=float(left_s))).isoformat(timespec="minutes")
    return {"per_day": per_day, "exhausts_at": exhausts}
