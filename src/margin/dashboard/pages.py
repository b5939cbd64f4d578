"""The data behind each dashboard page, as JSON-ready dicts (the HTML pages render exactly these). Every
figure comes from margin.ledger.read through margin.report / dashboard.queries, in the viewer's window."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa

from margin.dashboard import queries
from margin.dashboard.auth import Viewer
from margin.economics.money import capped_nanousd, from_nanousd, to_nanousd, usd_str
from margin.errors import InvalidRequest
from margin.governance.rules import Subject
from margin.ledger import read
from margin.ledger.read import Window
from margin.ledger.read.levers import levers
from margin.report.business import MarginReport, margins, tasks
from margin.report.queries import GROUP_LIMIT, MAX_GROUP_LIMIT
from margin.report.utilization import utilization

ISO_HOUR = "%Y-%m-%dT%H:00:00"


def scope_for(engine: sa.Engine, who: Viewer, since: str) -> Window:
    """The viewer's window (blocking: run it in a thread). A team is one org's team; the org narrowing is
    kept only when another org has a team of that name (else the rollups answer the team's pages)."""
    if since not in queries.SINCE_CHOICES:
        raise InvalidRequest(f"since must be one of {', '.join(queries.SINCE_CHOICES)}", param="since")
    org = None
    if who.team is not None:
        with engine.connect() as connection:
            org = read.team_org(connection, who.team, (who.principal.org,))
    return queries.window_for(since, team=who.team, key_id=who.key_id, org=org)


def overview(engine: sa.Engine, scope: Window, settings: Any = None) -> dict[str, Any]:
    """KPIs and trend, and the gross margin of the viewer's window when revenue is configured."""
    hourly = scope.since is not None and (datetime.now(UTC) - scope.since).total_seconds() <= 2 * 86400
    with engine.connect() as connection:
        points, totals = queries.trend(connection, scope, hourly)
    saved = Decimal(totals["cache_saved_usd"]) + Decimal(totals["routing_saved_usd"])
    return {
        "totals": totals,
        "saved_usd": usd_str(saved),  # cache + routing
        "trend": {"unit": "hour" if hourly else "day", "points": with_gaps(points, scope, hourly)},
        "gross_margin": overview_margin(engine, scope, settings) if settings is not None else None,
    }


def with_gaps(points: list[dict[str, Any]], scope: Window, hourly: bool) -> list[dict[str, Any]]:
    """Every hour (or day) of the window, quiet ones as zeros, so the trend's time axis is true."""
    if scope.since is None:
        return points
    fmt, step = (ISO_HOUR, timedelta(hours=1)) if hourly else ("%Y-%m-%dT00:00:00", timedelta(days=1))
    start = scope.since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    moment = start if hourly else start.replace(hour=0)
    last = (scope.until or datetime.now(UTC)).astimezone(UTC).strftime(fmt)
    labels: list[str] = []
    while (label := moment.strftime(fmt)) <= last:
        labels.append(label)
        moment += step
    found = {p["bucket"]: p for p in points}
    zero = {"requests": 0, "cost_usd": "0.000000000", "tokens": 0, "errors": 0}
    out = [found.pop(label, {"bucket": label, **zero}) for label in labels]
    return sorted([*out, *found.values()], key=lambda p: str(p["bucket"]))  # + rows stamped after now, if any


def breakdown(engine: sa.Engine, scope: Window, by: str, limit: int = GROUP_LIMIT) -> dict[str, Any]:
    if by not in queries.BREAKDOWNS:
        raise InvalidRequest(f"by must be one of {', '.join(queries.BREAKDOWNS)}", param="by")
    with engine.connect() as connection:
        groups, others, totals = queries.breakdown(connection, scope, by, limit)
    total = len(groups) + (others["groups"] if others else 0)
    return {"by": by, "groups": groups, "groups_total": total, "others": others, "totals": totals}


def latency(engine: sa.Engine, scope: Window) -> dict[str, Any]:
    with engine.connect() as connection:
        return queries.latency(connection, scope)


def savings(engine: sa.Engine, scope: Window) -> dict[str, Any]:
    with engine.connect() as connection:
        models, _, total = queries.breakdown(connection, scope, "model", limit=MAX_GROUP_LIMIT)
        more = levers(connection, scope).to_json()
    saved = Decimal(total["cache_saved_usd"]) + Decimal(total["routing_saved_usd"])
    saved += Decimal(more["batch_discount_usd"]) + Decimal(more["preferred_saved_usd"])
    would_have = Decimal(total["cost_usd"]) + saved
    return {
        "totals": total,
        "levers": more,
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


def _spend_org(budget: dict[str, Any]) -> tuple[str | None] | None:
    """Whose rows a listed budget adds up (as governance.service.spend_org): the org its scope names, else the
    one org of a per-org counter shown to a team key, else every org (an admin's total)."""
    if budget["scope"].get("org") is not None:
        return (budget["scope"]["org"],)
    return (budget["org"],) if "org" in budget else None


def _budget_row(budget: dict[str, Any], ledger_spent: int, now: datetime) -> dict[str, Any]:
    start = datetime.fromisoformat(budget["window_start"]) if budget["window_start"] else None
    end = datetime.fromisoformat(budget["resets_at"]) if budget["resets_at"] else None
    money = budget["unit"] == "usd"
    reserved = to_nanousd(Decimal(budget["reserved"])) if money else int(budget["reserved"])
    limit = capped_nanousd(Decimal(budget["usd"])) if money else int(budget["tokens"])  # "usd": 1e12 is no cap
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
    live = [b for b in await budget_status(services, subject) if "each" not in b]  # per-value: no one figure

    def ledger_sums() -> list[int]:
        with services.sync_engine().connect() as connection:
            return [
                read.budget_spent(
                    connection,
                    b["scope"]["kind"],
                    b["scope"].get("value"),
                    b["unit"] == "usd",
                    datetime.fromisoformat(b["window_start"]) if b["window_start"] else None,
                    datetime.fromisoformat(b["resets_at"]) if b["resets_at"] else None,
                    _spend_org(b),
                )
                for b in live
            ]

    spent = await services.read(ledger_sums)
    return {"budgets": [_budget_row(b, s, now) for b, s in zip(live, spent, strict=True)]}


# a backend the ledger has rows of and the config no longer names: every field a configured one's health has
NOT_CONFIGURED: Mapping[str, Any] = MappingProxyType({"status": "not configured", "usd_per_hour": None})


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


async def backends(services: Any, scope: Window, full: bool) -> dict[str, Any]:
    def load() -> tuple[list[dict[str, Any]], float, dict[str, dict[str, Any]]]:
        engine = services.sync_engine()
        with engine.connect() as connection:
            usage, seconds = queries.backend_usage(connection, scope), queries.window_seconds(connection, scope)
        spread = utilization_by_backend(engine, scope, services.settings)
        return usage, seconds, spread

    usage, seconds, spread = await services.read(load)
    health = _health(services)
    rows = {u["backend"]: u for u in usage}
    out = []
    for name in sorted(set(health) | {str(k) for k in rows if k is not None}):
        used = rows.get(name, {"requests": 0, "errors": 0, "cost_usd": "0.000000000", "tokens": 0, "busy_s": 0.0})
        busy = round(used["busy_s"] / seconds * 100, 6) if seconds else None
        util = spread.get(name, {})
        out.append(
            {
                "backend": name,
                **used,
                "busy_pct": busy,
                **health.get(name, NOT_CONFIGURED),  # its rows are in the ledger, but it was removed from config
                "utilization": util.get("utilization"),  # self-hosted only; a team's: its share of busy time
                "idle_cost_usd": util.get("idle_cost_usd"),  # shared by every team: admin views only
            }
        )
    return {"window_s": round(seconds, 1), "backends": out}


def gross_margin(report: MarginReport) -> dict[str, Any]:
    """(revenue − cost) / revenue over the groups that have revenue (the others have no margin to speak of)."""
    earning = [row for row in report.rows if row.revenue_usd is not None]
    revenue = sum((row.revenue_usd or Decimal(0) for row in earning), Decimal(0))
    cost = sum((row.cost_usd for row in earning), Decimal(0))
    return {
        "revenue_usd": usd_str(revenue) if earning else None,
        "cost_usd": usd_str(cost) if earning else None,
        "gross_margin": usd_str((revenue - cost) / revenue, 6) if revenue else None,
        "groups_with_revenue": len(earning),
    }


def has_revenue(settings: Any) -> bool:
    return bool(settings.revenue.features or settings.revenue.customers)


def overview_margin(engine: sa.Engine, scope: Window, settings: Any) -> dict[str, Any] | None:
    """The overview's gross-margin card: None when no revenue is configured (no query then)."""
    if not has_revenue(settings):
        return None
    # the card adds up the groups with revenue, each listed whatever the limit: not a row per feature read
    return gross_margin(margins(engine, scope, settings.revenue, (), "feature", with_attach=False, limit=1))


def margin_page(engine: sa.Engine, scope: Window, settings: Any, by: str, limit: int = GROUP_LIMIT) -> dict[str, Any]:
    """Gross margin and attach rate per feature (or customer), and cost per successful task, from
    margin.report.business: the numbers of `margin report --view margin|tasks --json` (with `--team` for a
    team key's own P&L), the first `limit` groups by cost (and every one with revenue) listed, the rest added
    up under `others`, as the breakdown's."""
    window = scope
    report = margins(engine, window, settings.revenue, (), by, limit=limit)
    found = tasks(engine, window, None)
    return {
        "by": by,
        "overall": gross_margin(report),
        "margins": report.to_json(),
        "tasks": found[0].to_json() if found else None,
    }


def utilization_by_backend(engine: sa.Engine, scope: Window, settings: Any) -> dict[str, dict[str, Any]]:
    """Self-hosted backends' utilization and idle cost (margin.report.utilization), keyed by backend; a team's
    share of busy time in a team's window."""
    return {u.backend: u.to_json() for u in utilization(engine, scope, settings)}
