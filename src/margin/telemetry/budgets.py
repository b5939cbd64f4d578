"""Budgets as Prometheus gauges in `GET /metrics`, computed at each scrape from the budget counters (the same
read `/admin/budgets` makes: `margin.api.admin.budget_states`), so a platform team can alert before a hard
budget starts refusing traffic.

Per counter of a budget (`level="budget"`: a budget with one counter; `level="org"`: one org's counter of a
per-org budget, for orgs with spend or reservations; `level="total"`: a per-org budget's sum over its orgs),
labelled `budget`, `org` (empty unless `level="org"`), `unit` (`usd` or `tokens`), `mode`, `period`, `level`:
`margin_budget_spent`, `margin_budget_reserved`, and except on totals (the limit applies to each org, not to
their sum) `margin_budget_limit`, `margin_budget_alert_ratio` (`alert_pct` / 100) and, for windowed budgets,
`margin_budget_window_reset_timestamp_seconds`. A per-value budget (`user=*`, `tag=customer=*`: one counter
per end user or tag value; and any user scope) is one series, `level="each"`, with its limit, alert ratio and
reset only: never a series per user or value (unbounded cardinality); who spent what is in the ledger
(`margin report --by user`). Amounts of USD budgets are integer nano-USD (USD × 1e9, as
`margin_cost_nanousd_total`), of token budgets tokens. `margin_budget_read_failed` is 1 when this scrape could
not read the counters (Redis down, or slower than `read_timeout_s`; the other metrics are served as usual).

These gauges are never written to prometheus-client's multiprocess files: the worker that answers the scrape
reads the shared counters itself, so with `--workers N` every worker reports the same numbers, never N times
them. Concurrent scrapes share one read (`SingleFlight`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from margin.singleflight import SingleFlight

log = logging.getLogger("margin.telemetry")
READ_TIMEOUT_S = 3.0
LABELS = ("budget", "org", "unit", "mode", "period", "level")


@dataclass(frozen=True, slots=True)
class BudgetSeries:
    """One counter of a budget as of this scrape. `limit` None: a per-org budget's total (no limit of its own)."""

    budget: str
    org: str
    unit: str  # "usd" (amounts in nano-USD) or "tokens"
    mode: str
    period: str
    level: str  # "budget", "org" or "total"
    spent: int | None  # None: a per-value budget (`level="each"`), whose values are not series
    reserved: int | None
    limit: int | None = None
    alert_pct: int | None = None
    resets_at: float | None = None  # Unix seconds; None for lifetime budgets

    @property
    def labels(self) -> list[str]:
        return [self.budget, self.org, self.unit, self.mode, self.period, self.level]


BudgetRead = Callable[[], Awaitable[Sequence[BudgetSeries]]]


class BudgetGauges:
    """Reads the budgets at scrape time (bounded by `read_timeout_s`; one read shared by concurrent scrapes) and
    renders them as text exposition."""

    def __init__(self, read_timeout_s: float = READ_TIMEOUT_S) -> None:
        self.read_timeout_s = read_timeout_s
        self._flights = SingleFlight()

    async def read(self, source: BudgetRead) -> Sequence[BudgetSeries] | None:
        """The budgets' series, or None when they could not be read (logged; the scrape still answers)."""
        timeout = self.read_timeout_s
        try:  # the bound is inside the shared run: a read that hangs ends for every waiter, and the next retries
            return await self._flights.run("budgets", lambda: asyncio.wait_for(source(), timeout))
        except TimeoutError:
            log.warning("/metrics: the budget counters were not read within %.1f s", self.read_timeout_s)
        except Exception:  # the store's MarginError (Redis down) or anything else: never fail the whole scrape
            log.warning("/metrics: the budget counters could not be read", exc_info=True)
        return None


class _Collector:
    def __init__(self, series: Sequence[BudgetSeries] | None) -> None:
        self.series = series

    def collect(self) -> Iterator[Metric]:
        failed = GaugeMetricFamily(
            "margin_budget_read_failed", "1 when this scrape could not read the budget counters (e.g. Redis down)."
        )
        failed.add_metric([], 0.0 if self.series is not None else 1.0)
        yield failed
        if self.series is None:
            return
        families = _families()
        for item in self.series:
            if item.spent is not None and item.reserved is not None:
                families["spent"].add_metric(item.labels, float(item.spent))
                families["reserved"].add_metric(item.labels, float(item.reserved))
            if item.limit is not None:
                families["limit"].add_metric(item.labels, float(item.limit))
            if item.alert_pct is not None:
                families["alert_ratio"].add_metric(item.labels, item.alert_pct / 100)
            if item.resets_at is not None:
                families["reset"].add_metric(item.labels, item.resets_at)
        yield from families.values()


def _families() -> dict[str, GaugeMetricFamily]:
    amount = "nano-USD (USD × 1e9) for unit=usd, tokens for unit=tokens"

    def gauge(name: str, text: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, text, labels=LABELS)

    return {
        "limit": gauge("margin_budget_limit", f"A budget's cap per counter, in {amount}."),
        "spent": gauge("margin_budget_spent", f"Spent in the budget's current window, in {amount}."),
        "reserved": gauge("margin_budget_reserved", f"Reserved by requests in flight, in {amount}."),
        "alert_ratio": gauge("margin_budget_alert_ratio", "The budget's alert_pct / 100."),
        "reset": gauge(
            "margin_budget_window_reset_timestamp_seconds",
            "When the budget's window resets (Unix seconds; absent for lifetime budgets).",
        ),
    }


def render(series: Sequence[BudgetSeries] | None) -> bytes:
    """The budget families as text exposition (`None`: the counters could not be read)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(series))
    return generate_latest(registry)
