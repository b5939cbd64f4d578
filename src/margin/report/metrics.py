"""Operational aggregates the dashboard and `margin report --view …` share: spend over time, savings,
energy and carbon. Every function takes an engine and a `Window` and returns frozen dataclasses whose
`to_json()` is exactly what `margin report --json` prints (money as decimal strings, never floats)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa

from margin.economics.money import JOULES_PER_KWH, THOUSAND, from_nanousd, usd_str
from margin.report.levers import NONE, Levers, levers
from margin.report.queries import Window
from margin.report.source import source

Bucket = Literal["hour", "day"]


def usd(nano: Any) -> Decimal:
    return from_nanousd(int(nano or 0))


def per_1k(cost: Decimal, tokens: int) -> Decimal | None:
    return cost / Decimal(tokens) * THOUSAND if tokens else None


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; the ledger writes UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


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


def timeseries(engine: sa.Engine, window: Window, bucket: Bucket = "day") -> list[TimePoint]:
    """Spend, tokens, $/1K tokens, energy and carbon per hour or day, oldest first."""
    src = source(window)
    m = src.m
    with engine.connect() as connection:
        start = src.bucket(connection, bucket).label("start")
        measures = ("requests", "input_tokens", "output_tokens", "cost_nanousd", "unpriced", "priced_tokens")
        query = (
            sa.select(start, *(m(name) for name in measures), m("energy_j"), m("co2e_g"), m("saved_nanousd"))
            .where(*src.where())
            .group_by(start)
            .order_by(start)
        )
        rows = connection.execute(query).all()
    points = []
    for row in rows:
        cost = usd(row[4])
        points.append(
            TimePoint(
                str(row[0]),
                int(row[1]),
                int(row[2] or 0),
                int(row[3] or 0),
                cost,
                int(row[5] or 0),
                per_1k(cost, int(row[6] or 0)),
                float(row[7] or 0),
                float(row[8] or 0),
                usd(row[9]),
            )
        )
    return points


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
    levers: Levers = NONE  # batch discount and lowest-carbon / lowest-cost routes (margin.report.levers)

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
    src = source(window)
    names = ("cost_nanousd", "cache_hits", "saved_nanousd", "routed", "routing_saved_nanousd", "routing_unpriced")
    query = sa.select(*(src.m(name) for name in names)).where(*src.where())
    with engine.connect() as connection:
        row = connection.execute(query).one()
        found = levers(connection, window.where())
    return Savings(
        usd(row[0]), int(row[1] or 0), usd(row[2]), int(row[3] or 0), usd(row[4]), int(row[5] or 0), levers=found
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

    @property
    def kwh(self) -> float:
        return self.energy_j / JOULES_PER_KWH

    @property
    def co2e_g_per_1k_tokens(self) -> float | None:
        return self.co2e_g / self.tokens * 1000 if self.tokens else None

    def to_json(self) -> dict[str, Any]:
        per_1k_g = self.co2e_g_per_1k_tokens
        return {
            "key": self.key,
            "requests": self.requests,
            "tokens": self.tokens,
            "energy_j": round(self.energy_j, 6),
            "energy_kwh": round(self.kwh, 12),
            "co2e_g": round(self.co2e_g, 9),
            "co2e_g_per_1k_tokens": None if per_1k_g is None else round(per_1k_g, 9),
            "measured_requests": self.measured_requests,
            "modelled_requests": self.modelled_requests,
            "unknown_requests": self.unknown_requests,
        }


def carbon(engine: sa.Engine, window: Window, by: str = "region") -> list[CarbonRow]:
    """Energy and carbon per region (or any `GROUPS` key), largest emitter first."""
    from margin.report.queries import group_column

    group_column(by)  # rejects an unknown grouping
    src = source(window, (by,))
    key = src.dim(by).label("key")
    tokens = src.m("input_tokens") + src.m("output_tokens")
    names = ("energy_j", "co2e_g", "energy_measured", "energy_modelled", "energy_unknown")
    query = (
        sa.select(key, src.m("requests"), tokens, *(src.m(name) for name in names)).where(*src.where()).group_by(key)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    out = [
        CarbonRow(r[0], int(r[1]), int(r[2] or 0), float(r[3] or 0), float(r[4] or 0), int(r[5]), int(r[6]), int(r[7]))
        for r in rows
    ]
    return sorted(out, key=lambda c: (-c.co2e_g, str(c.key)))
