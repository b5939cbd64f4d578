"""Operational views the dashboard and `margin report --view …` share: spend over time, savings, energy and
carbon, rendered from margin.ledger.read. Every function takes an engine and a `Window` and returns frozen
dataclasses whose `to_json()` is exactly what `margin report --json` prints (money as decimal strings,
energy and carbon from integer microjoules and nanograms)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa

from margin.economics.money import JOULES_PER_KWH, THOUSAND, from_nanousd, usd_str
from margin.ledger import read
from margin.ledger.measures import MICRO, NANO
from margin.ledger.read import Window, as_utc
from margin.ledger.read.levers import NONE, Levers, levers
from margin.report.queries import check_group, per_1k_figure

Bucket = Literal["hour", "day"]


def usd(nano: Any) -> Decimal:
    return from_nanousd(int(nano or 0))


def per_1k(cost: Decimal, tokens: int) -> Decimal | None:
    return cost / Decimal(tokens) * THOUSAND if tokens else None


@dataclass(frozen=True, slots=True)
class TimePoint:
    start: str  # ISO start of the bucket (UTC)
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    unpriced_requests: int
    usd_per_1k_tokens: Decimal | None  # over priced requests only
    energy_j: float
    co2e_g: float
    cache_saved_usd: Decimal

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": usd_str(self.cost_usd),
            "unpriced_requests": self.unpriced_requests,
            "usd_per_1k_tokens": usd_str(self.usd_per_1k_tokens),
            "energy_j": round(self.energy_j, 6),
            "co2e_g": round(self.co2e_g, 9),
            "cache_saved_usd": usd_str(self.cache_saved_usd),
        }


def point(start: str, sums: read.Sums) -> TimePoint:
    cost = usd(sums["cost_nanousd"])
    return TimePoint(
        start,
        sums["requests"],
        sums["input_tokens"],
        sums["output_tokens"],
        cost,
        sums["unpriced"],
        per_1k(cost, sums["priced_tokens"]),
        sums["energy_uj"] / MICRO,
        sums["co2e_ng"] / NANO,
        usd(sums["saved_nanousd"]),
    )


def timeseries(engine: sa.Engine, window: Window, bucket: Bucket = "day") -> list[TimePoint]:
    """Spend, tokens, $/1K tokens, energy and carbon per hour or day (ISO start, UTC), oldest first."""
    with engine.connect() as connection:
        found = read.grouped(connection, window, bucket)
    return [point(str(start), sums) for start, sums in sorted(found.items(), key=lambda kv: str(kv[0]))]


@dataclass(frozen=True, slots=True)
class Savings:
    """What the cost levers saved against the counterfactual of not using them (DESIGN §3, §4)."""

    actual_cost_usd: Decimal
    cache_hits: int
    cache_saved_usd: Decimal  # saved_nanousd of cache_hit rows: what producing the answer had cost
    routed_requests: int
    routing_saved_usd: Decimal  # Σ (counterfactual − cost) on routed rows where both are known
    routing_unpriced: int  # routed rows whose cost or counterfactual is unknown (left out of the sum)
    quantization_saved_usd: Decimal | None = None  # no ledger field measures it yet
    quantization_note: str = "not measured: the ledger has no counterfactual for quantization"
    levers: Levers = NONE  # batch discount and lowest-carbon / lowest-cost routes (margin.ledger.read.levers)

    @property
    def counterfactual_cost_usd(self) -> Decimal:
        more = self.levers.batch_discount_usd + self.levers.preferred_saved_usd
        return self.actual_cost_usd + self.cache_saved_usd + self.routing_saved_usd + more

    def to_json(self) -> dict[str, Any]:
        return {
            "actual_cost_usd": usd_str(self.actual_cost_usd),
            "counterfactual_cost_usd": usd_str(self.counterfactual_cost_usd),
            "cache_hits": self.cache_hits,
            "cache_saved_usd": usd_str(self.cache_saved_usd),
            "routed_requests": self.routed_requests,
            "routing_saved_usd": usd_str(self.routing_saved_usd),
            "routing_unpriced": self.routing_unpriced,
            "quantization_saved_usd": usd_str(self.quantization_saved_usd),
            "quantization_note": self.quantization_note,
            **self.levers.to_json(),
        }


def savings(engine: sa.Engine, window: Window) -> Savings:
    with engine.connect() as connection:
        t = read.totals(connection, window)
        found = levers(connection, window)
    return Savings(
        usd(t["cost_nanousd"]),
        t["cache_hits"],
        usd(t["saved_nanousd"]),
        t["routed"],
        usd(t["routing_saved_nanousd"]),
        t["routing_unpriced"],
        levers=found,
    )


@dataclass(frozen=True, slots=True)
class CarbonRow:
    key: str | None
    requests: int
    tokens: int
    energy_j: float  # facility energy (IT × PUE)
    co2e_g: float
    measured_requests: int  # energy from a meter (RAPL/NVML)
    modelled_requests: int  # energy = watts × busy seconds (an estimate)
    unknown_requests: int  # no energy figure at all (hosted APIs without an estimate)
    co2e_tokens: int  # the tokens of the requests with a carbon figure (the per-1K divisor)
    energy_tokens: int = 0  # the tokens of the requests with an energy figure (energy per 1K's divisor)

    @property
    def kwh(self) -> float:
        return self.energy_j / JOULES_PER_KWH

    @property
    def co2e_g_per_1k_tokens(self) -> float | None:
        """Over the requests with a carbon figure only: a hosted API's tokens (no energy model) are not zero
        carbon, and counting them would dilute the figure."""
        return per_1k_figure(self.co2e_g, self.co2e_tokens)

    @property
    def energy_j_per_1k_tokens(self) -> float | None:
        """Over the requests with an energy figure only, as carbon per 1K tokens is."""
        return per_1k_figure(self.energy_j, self.energy_tokens)

    def to_json(self) -> dict[str, Any]:
        per_1k_g, per_1k_j = self.co2e_g_per_1k_tokens, self.energy_j_per_1k_tokens
        return {
            "key": self.key,
            "requests": self.requests,
            "tokens": self.tokens,
            "energy_j": round(self.energy_j, 6),
            "energy_kwh": round(self.kwh, 12),
            "energy_tokens": self.energy_tokens,
            "energy_j_per_1k_tokens": None if per_1k_j is None else round(per_1k_j, 6),
            "co2e_g": round(self.co2e_g, 9),
            "co2e_tokens": self.co2e_tokens,
            "co2e_g_per_1k_tokens": None if per_1k_g is None else round(per_1k_g, 9),
            "measured_requests": self.measured_requests,
            "modelled_requests": self.modelled_requests,
            "unknown_requests": self.unknown_requests,
        }


def carbon(engine: sa.Engine, window: Window, by: str = "region") -> list[CarbonRow]:
    """Energy and carbon per region (or any report grouping), largest emitter first."""
    check_group(by)
    with engine.connect() as connection:
        found = read.grouped(connection, window, by)
    out = [
        CarbonRow(
            key,
            s["requests"],
            s["input_tokens"] + s["output_tokens"],
            s["energy_uj"] / MICRO,
            s["co2e_ng"] / NANO,
            s["energy_measured"],
            s["energy_modelled"],
            s["energy_unknown"],
            s["co2e_tokens"],
            s["energy_tokens"],
        )
        for key, s in found.items()
    ]
    return sorted(out, key=lambda c: (-c.co2e_g, str(c.key)))


__all__ = ["Bucket", "CarbonRow", "Savings", "TimePoint", "as_utc", "carbon", "per_1k", "savings", "timeseries", "usd"]
