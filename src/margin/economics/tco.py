"""Self-hosted cost (TCO), DESIGN §4.

    gpu_cost_per_s = hourly_tco / 3600
    cost_per_token = gpu_cost_per_s / tokens_per_s
    with overheads = cost_per_token × (1 + energy_overhead + network_overhead)

Seed 001's example: $10/h ÷ (33 tok/s × 3600) = $0.0000842/token; × 1.30 ≈ $0.109 per 1K tokens.
When power and an energy price are known, energy is priced explicitly (kWh × PUE × $/kWh) on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from margin.economics.carbon import co2e_grams
from margin.economics.money import JOULES_PER_KWH, SECONDS_PER_HOUR, THOUSAND, dec


@dataclass(frozen=True, slots=True)
class TcoInputs:
    usd_per_hour: Decimal
    tokens_per_s: Decimal
    energy_overhead: Decimal = Decimal(0)
    network_overhead: Decimal = Decimal(0)
    watts: float | None = None
    pue: float = 1.0
    usd_per_kwh: Decimal = Decimal(0)
    grid_g_per_kwh: float | None = None


@dataclass(frozen=True, slots=True)
class TcoResult:
    usd_per_token_base: Decimal
    usd_per_token: Decimal
    usd_per_1k_tokens: Decimal
    energy_j_per_token: float | None
    energy_usd_per_1k_tokens: Decimal | None
    co2e_g_per_1k_tokens: float | None


def overhead_factor(energy_overhead: Decimal, network_overhead: Decimal) -> Decimal:
    return 1 + energy_overhead + network_overhead


def calculate(inputs: TcoInputs) -> TcoResult:
    if inputs.tokens_per_s <= 0:
        raise ValueError("tokens_per_s must be positive")
    base = inputs.usd_per_hour / SECONDS_PER_HOUR / inputs.tokens_per_s
    per_token = base * overhead_factor(inputs.energy_overhead, inputs.network_overhead)
    energy_j = energy_usd_1k = co2e_1k = None
    if inputs.watts is not None:
        energy_j = inputs.watts * inputs.pue / float(inputs.tokens_per_s)
        energy_usd_1k = dec(energy_j * 1000 / JOULES_PER_KWH) * inputs.usd_per_kwh
        per_token += energy_usd_1k / THOUSAND
        if inputs.grid_g_per_kwh is not None:
            co2e_1k = co2e_grams(energy_j * 1000, inputs.grid_g_per_kwh)
    return TcoResult(base, per_token, per_token * THOUSAND, energy_j, energy_usd_1k, co2e_1k)


def busy_cost(
    usd_per_hour: Decimal,
    busy_s: float,
    *,
    energy_overhead: Decimal = Decimal(0),
    network_overhead: Decimal = Decimal(0),
    facility_energy_j: float | None = None,
    usd_per_kwh: Decimal = Decimal(0),
) -> Decimal:
    """Cost of `busy_s` seconds of a self-hosted backend, plus its facility energy when priced."""
    cost = usd_per_hour * dec(busy_s) / SECONDS_PER_HOUR * overhead_factor(energy_overhead, network_overhead)
    if facility_energy_j is not None and usd_per_kwh:
        cost += dec(facility_energy_j / JOULES_PER_KWH) * usd_per_kwh
    return cost
