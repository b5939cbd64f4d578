"""`GET /metrics` (Prometheus text) and `GET /admin/backends` (each backend's circuit, recent errors and
latency). Both need an admin key when keys exist (open mode: the loopback operator)."""

from __future__ import annotations

import asyncio
import functools
import os
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from margin.api.admin import budget_states, endpoint
from margin.api.errors import NOSNIFF
from margin.backend_config import HttpBackendConfig
from margin.errors import NotFound
from margin.governance.admission import budget_limit
from margin.report.queries import percentile
from margin.telemetry.budgets import BudgetSeries
from margin.telemetry.metrics import CONTENT_TYPE
from margin.types import Principal

LIMITS = ("connect_timeout_s", "first_token_timeout_s", "idle_timeout_s", "timeout_s")


async def metrics(request: Request, _: Principal) -> Response:
    services = request.app.state.services
    telemetry = services.telemetry
    if telemetry.metrics is None:
        raise NotFound("metrics are turned off (telemetry.metrics: false)")
    telemetry.refresh()  # circuits and queue depth as of now, not as of the last refresh
    budgets = await telemetry.metrics.budgets.read(functools.partial(budget_series, services))
    body = await asyncio.to_thread(telemetry.metrics.render_with_budgets, budgets)
    return Response(body, media_type=CONTENT_TYPE, headers=dict([NOSNIFF]))


async def budget_series(services: Any) -> list[BudgetSeries]:
    """Every budget's gauges from one read of its counters (`budget_states`, as `/admin/budgets`): one series
    per budget; for a per-org budget, one per org with spend or reservations (callers in no org: `org=""`) and
    their total (`level="total"`, without a limit: the limit applies to each org); for a per-value budget
    (`user=*`, `tag=customer=*`) its limit, alert ratio and reset only (`level="each"`): no series per value."""
    out = []
    for state in await budget_states(services):
        budget = state.budget
        unit, resets = ("usd" if state.money else "tokens"), (state.end.timestamp() if state.end else None)
        base = BudgetSeries(budget.name, "", unit, budget.mode, budget.period, "budget", 0, 0,
                            budget_limit(budget), budget.alert_pct, resets)  # fmt: skip
        if budget.scope.unlisted:  # one counter per user or tag value: its limit only, never a series per value
            out.append(replace(base, level="each", spent=None, reserved=None))
            continue
        if not budget.scope.per_org:
            spent, reserved = state.each[None]
            out.append(replace(base, spent=spent, reserved=reserved))
            continue
        for org, (spent, reserved) in state.each.items():
            if spent or reserved:
                out.append(replace(base, org=org or "", level="org", spent=spent, reserved=reserved))
        spent, reserved = (sum(values) for values in zip(*state.each.values(), strict=True))
        out.append(BudgetSeries(budget.name, "", unit, budget.mode, budget.period, "total", spent, reserved))
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def describe_backend(services: Any, name: str) -> dict[str, Any]:
    config = services.settings.backends[name]
    breaker = services.breakers.describe(name)
    latencies = breaker.pop("latencies_s")
    entry: dict[str, Any] = {
        "name": name,
        "kind": config.kind,
        "region": config.region,
        "models": sorted(
            t.public for t in {id(t): t for t in services.targets.values()}.values() if t.backend_name == name
        ),
        "circuit": breaker,
        "latency_ms": {  # successful calls: whole answers, or a stream's first event
            "recent": len(latencies),
            "p50": _ms(percentile(latencies, 50)),
            "p95": _ms(percentile(latencies, 95)),
            "max": _ms(latencies[-1] if latencies else None),
        },
        "health": services.backends[name].health(),
    }
    if isinstance(config, HttpBackendConfig):  # the hosted kinds (`openai`, `anthropic`) have time limits
        entry["limits"] = {key: getattr(config, key) for key in LIMITS}
        entry["retries"] = config.retries.model_dump()
    return entry


async def backends(request: Request, _: Principal) -> Any:
    """This process's view (with several workers, each has its own; `pid` says whose this is)."""
    services = request.app.state.services
    admission = services.settings.admission
    return {
        "pid": os.getpid(),
        "breaker": {"failures": admission.breaker_failures, "cooldown_s": admission.breaker_cooldown_s},
        "data": [describe_backend(services, name) for name in services.backends],
    }


def routes() -> list[Route]:
    return [
        Route("/metrics", endpoint(metrics), methods=["GET"]),
        Route("/admin/backends", endpoint(backends), methods=["GET"]),
    ]
