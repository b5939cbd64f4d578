"""The data behind each dashboard page, as JSON-ready dicts (the HTML pages render exactly these)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from margin.dashboard import queries
from margin.dashboard.auth import Viewer
from margin.dashboard.queries import Scope
from margin.economics.money import from_nanousd, to_nanousd, usd_str
from margin.errors import InvalidRequest
from margin.governance.rules import Subject


def scope_for(who: Viewer, since: str) -> Scope:
    if since not in queries.SINCE_CHOICES:
        raise InvalidRequest(f"since must be one of {', '.join(queries.SINCE_CHOICES)}", param="since")
    return Scope.parse(since, team=who.team, key_id=who.key_id)


def overview(engine: sa.Engine, scope: Scope) -> dict[str, Any]:
    hourly = scope.since is not None and (datetime.now(UTC) - scope.since).total_seconds() <= 2 * 86400
    with engine.connect() as connection:
        points, totals = queries.trend(connection, scope, hourly)
        return {
            "totals": totals,
            "trend": {"unit": "hour" if hourly else "day", "points": points},
            # Gross margin (revenue − inference cost) / revenue comes from the business-metrics work (econ
            # branch, margin.report); until it is wired in the dashboard shows it as not available.
            "gross_margin": None,
        }


def breakdown(engine: sa.Engine, scope: Scope, by: str) -> dict[str, Any]:
    if by not in queries.BREAKDOWNS:
        raise InvalidRequest(f"by must be one of {', '.join(queries.BREAKDOWNS)}", param="by")
    with engine.connect() as connection:
        groups, totals = queries.breakdown(connection, scope, by)
    return {"by": by, "groups": groups, "totals": totals}


def latency(engine: sa.Engine, scope: Scope) -> dict[str, Any]:
    with engine.connect() as connection:
        return queries.latency(connection, scope)


def savings(engine: sa.Engine, scope: Scope) -> dict[str, Any]:
    with engine.connect() as connection:
        models, total = queries.breakdown(connection, scope, "model")
    saved = Decimal(total["cache_saved_usd"]) + Decimal(total["routing_saved_usd"])
    would_have = Decimal(total["cost_usd"]) + saved
    return {
        "totals": total,
        "saved_usd": usd_str(saved),
        "saved_pct": round(float(saved / would_have * 100), 2) if would_have else None,
        "models": [
            {
                key: g[key]
                for key in (
                    "key",
                    "requests",
                    "cost_usd",
                    "cache_hits",
                    "cache_saved_usd",
                    "routing_saved_usd",
                    "routed_requests",
                )
            }
            for g in models
        ],
    }


def _scope_label(scope: dict[str, Any]) -> str:
    return "global" if scope.get("kind") == "global" else f"{scope.get('kind')}={scope.get('value')}"


def _budget_row(budget: dict[str, Any], ledger_spent: int, now: datetime) -> dict[str, Any]:
    start = datetime.fromisoformat(budget["window_start"]) if budget["window_start"] else None
    end = datetime.fromisoformat(budget["resets_at"]) if budget["resets_at"] else None
    money = budget["unit"] == "usd"
    reserved = to_nanousd(Decimal(budget["reserved"])) if money else int(budget["reserved"])
    limit = to_nanousd(Decimal(budget["usd"])) if money else int(budget["tokens"])
    rate = queries.burn(ledger_spent + reserved, start, end, limit, now)

    def show(amount: Any) -> Any:
        if amount is None:
            return None
        return usd_str(from_nanousd(int(amount))) if money else int(amount)

    return {
        "name": budget["name"],
        "scope": _scope_label(budget["scope"]),
        "period": budget["period"],
        "mode": budget["mode"],
        "unit": budget["unit"],
        "limit": budget["usd"] if money else limit,
        "spent": show(ledger_spent),  # the ledger's sum for the window: the source of truth
        "reserved": budget["reserved"],  # live: requests in flight
        "counter_spent": budget["spent"],  # the live admission counter (reconciled when first used)
        "used_pct": round((ledger_spent + reserved) / limit * 100, 2) if limit else None,
        "burn_per_day": show(rate["per_day"]),
        "exhausts_at": rate["exhausts_at"],
        "resets_at": budget["resets_at"],
    }


async def budgets(services: Any, who: Viewer) -> dict[str, Any]:
    from margin.api.admin import budget_status

    subject = None
    if not who.full:
        p = who.principal
        subject = Subject(p.key_id, p.team, p.org, dict(p.tags))
    now = datetime.now(UTC)
    live = await budget_status(services, subject)

    def ledger_sums() -> list[int]:
        with services.sync_engine().connect() as connection:
            return [
                queries.budget_spent(
                    connection,
                    b["scope"]["kind"],
                    b["scope"].get("value"),
                    b["unit"] == "usd",
                    datetime.fromisoformat(b["window_start"]) if b["window_start"] else None,
                    datetime.fromisoformat(b["resets_at"]) if b["resets_at"] else None,
                )
                for b in live
            ]

    spent = await asyncio.to_thread(ledger_sums)
    return {"budgets": [_budget_row(b, s, now) for b, s in zip(live, spent, strict=True)]}


def _health(services: Any) -> dict[str, dict[str, Any]]:
    breakers = services.breakers.snapshot()
    out = {}
    for name, backend in services.backends.items():
        config = services.settings.backends[name]
        hardware = getattr(config, "hardware", None)
        breaker = breakers.get(name, {"failures": 0, "open": False})
        out[name] = {
            "status": backend.health().get("status", "unknown"),
            "breaker_open": bool(breaker["open"]),
            "consecutive_failures": int(str(breaker["failures"])),
            "usd_per_hour": str(hardware.usd_per_hour) if hardware and hardware.usd_per_hour is not None else None,
        }
    return out


async def backends(services: Any, scope: Scope) -> dict[str, Any]:
    def read() -> tuple[list[dict[str, Any]], float]:
        with services.sync_engine().connect() as connection:
            return queries.backend_usage(connection, scope), queries.window_seconds(scope, connection)

    usage, seconds = await asyncio.to_thread(read)
    health = _health(services)
    rows = {u["backend"]: u for u in usage}
    out = []
    for name in sorted(set(health) | {str(k) for k in rows if k is not None}):
        used = rows.get(name, {"requests": 0, "errors": 0, "cost_usd": "0.000000000", "tokens": 0, "busy_s": 0.0})
        busy = round(used["busy_s"] / seconds * 100, 6) if seconds else None
        out.append({"backend": name, **used, "busy_pct": busy, **health.get(name, {"status": "not configured"})})
    return {"window_s": round(seconds, 1), "backends": out}
