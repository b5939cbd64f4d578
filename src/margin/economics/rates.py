"""What one token costs and emits on a deployment at a given hour: the meter's own arithmetic applied to a
reference request, so routing and scheduling compare deployments exactly as the ledger will price them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from margin.config import ModelConfig
from margin.economics.meter import Meter
from margin.types import Usage

REFERENCE = Usage(500, 500, source="estimated")  # half prompt, half answer


@dataclass(frozen=True, slots=True)
class UnitRates:
    g_per_token: float | None  # None: no energy figure for the backend (a hosted API without hardware)
    usd_per_token: Decimal | None  # None: unknown price
    g_per_kwh: float | None
    grid_source: str | None


def tokens_per_s(meter: Meter, backend: str, fallback: float) -> float:
    """The backend's throughput as configured (hardware.tokens_per_s), else the admission assumption."""
    hardware = meter.settings.backends[backend].hardware
    return (hardware.tokens_per_s if hardware else None) or fallback


def unit_rates(
    meter: Meter,
    public: str,
    model: ModelConfig,
    at: datetime | None,
    fallback_tokens_per_s: float,
    reference: Usage = REFERENCE,
) -> UnitRates:
    tokens = reference.input_tokens + reference.output_tokens
    busy_s = tokens / tokens_per_s(meter, model.backend, fallback_tokens_per_s)
    charge = meter.charge(public, model, reference, busy_s, at=at)
    return UnitRates(
        None if charge.co2e_g is None else charge.co2e_g / tokens,
        None if charge.cost_usd is None else charge.cost_usd / tokens,
        charge.grid_g_per_kwh,
        charge.grid_source,
    )
