"""$/1K tokens, J/token and gCO2e/1K tokens of a configuration in a region, through margin's own economics
(`economics.tco.calculate`, DESIGN §4, and the bundled grid table). Money stays Decimal.

Rented hardware: the provider's on-demand $/device-hour × the region's multiplier (energy is in the price).
Owned hardware: purchase / amortization + colocation per kW of TDP, and metered facility energy × $/kWh on top.
Power per device = idle + (TDP × busy power fraction − idle) × busy fraction; facility energy = IT × PUE."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from margin.economics.carbon import GridTable
from margin.economics.money import dec, usd_str
from margin.economics.tco import TcoInputs, calculate
from margin.plan.catalog import Hardware, Region
from margin.plan.perf import ServePoint, Setup

HOURS_PER_YEAR = Decimal("8766")
HOURS_PER_MONTH = Decimal("730")


@dataclass(frozen=True, slots=True)
class Pricing:
    usd_per_device_hour: Decimal
    energy_included: bool
    basis: str
    confidence: str


def pricing(hw: Hardware, region: Region) -> Pricing | None:
    """The hourly price of one device in `region`, or None when the region cannot price it."""
    if region.owned:
        if hw.purchase is None or region.amortization_years is None:
            return None
        years = dec(region.amortization_years)
        colo = (region.colo_usd_per_kw_month or Decimal(0)) * dec(hw.tdp_w / 1000) / HOURS_PER_MONTH
        hourly = hw.purchase.usd_per_device / (years * HOURS_PER_YEAR) + colo
        basis = (
            f"owned: ${hw.purchase.usd_per_device} / {region.amortization_years} y + colocation "
            f"${region.colo_usd_per_kw_month}/kW-month ({hw.purchase.source}, {hw.purchase.as_of})"
        )
        return Pricing(hourly, False, basis, hw.purchase.confidence)
    price = hw.price(region.provider)
    if price is None:
        return None
    basis = f"{price.provider} on-demand {price.instance} ({price.as_of})"
    if region.price_multiplier != 1:
        basis += f" × {region.price_multiplier} regional"
    return Pricing(price.usd_per_hour * region.price_multiplier, True, basis, price.confidence)


@dataclass(frozen=True, slots=True)
class Economics:
    region: str
    replicas: int
    devices: int
    busy_fraction: float
    pricing: Pricing
    usd_per_hour: Decimal
    usd_per_1k_tokens: Decimal
    usd_per_1k_output_tokens: Decimal
    watts_per_device: float
    j_per_token: float  # facility energy per token (input + output)
    j_per_output_token: float
    co2e_g_per_1k_tokens: float
    co2e_g_per_1k_output_tokens: float
    grid_g_per_kwh: float
    grid_source: str
    pue: float

    @property
    def usd_per_month(self) -> Decimal:
        return self.usd_per_hour * HOURS_PER_MONTH

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "replicas": self.replicas,
            "devices": self.devices,
            "busy_fraction": round(self.busy_fraction, 4),
            "usd_per_device_hour": usd_str(self.pricing.usd_per_device_hour, 4),
            "price_basis": self.pricing.basis,
            "price_confidence": self.pricing.confidence,
            "energy_in_price": self.pricing.energy_included,
            "usd_per_hour": usd_str(self.usd_per_hour, 4),
            "usd_per_month": usd_str(self.usd_per_month, 2),
            "usd_per_1k_tokens": usd_str(self.usd_per_1k_tokens, 9),
            "usd_per_1k_output_tokens": usd_str(self.usd_per_1k_output_tokens, 9),
            "watts_per_device": round(self.watts_per_device, 1),
            "j_per_token": self.j_per_token,
            "j_per_output_token": self.j_per_output_token,
            "co2e_g_per_1k_tokens": self.co2e_g_per_1k_tokens,
            "co2e_g_per_1k_output_tokens": self.co2e_g_per_1k_output_tokens,
            "grid_g_per_kwh": self.grid_g_per_kwh,
            "grid_source": self.grid_source,
            "pue": self.pue,
        }


def device_watts(setup: Setup, busy_fraction: float) -> float:
    hw, eff = setup.hw, setup.eff
    busy_w = hw.tdp_w * eff.power_busy_fraction
    return hw.idle_w + (busy_w - hw.idle_w) * busy_fraction


def replicas_for(point: ServePoint, rate_rps: float | None) -> tuple[int, float]:
    """Replicas needed for `rate_rps` and their busy fraction (no rate: one replica, fully busy)."""
    if rate_rps is None:
        return 1, 1.0
    replicas = max(1, math.ceil(rate_rps / point.requests_per_s - 1e-9))
    return replicas, rate_rps / (replicas * point.requests_per_s)


def economics(
    setup: Setup,
    region_key: str,
    point: ServePoint,
    rate_rps: float | None = None,
    energy_overhead: Decimal = Decimal(0),
    network_overhead: Decimal = Decimal(0),
    grid: GridTable | None = None,
) -> Economics | None:
    """Cost, energy and carbon of serving `rate_rps` (or one fully busy replica) in a region; None when the region
    does not offer or cannot price the hardware."""
    region = setup.catalog.get_region(region_key)
    price = pricing(setup.hw, region) if setup.hardware_key in region.offers else None
    if price is None:
        return None
    replicas, busy = replicas_for(point, rate_rps)
    devices = replicas * setup.devices
    watts = device_watts(setup, busy)
    intensity = (grid or GridTable.bundled()).intensity(region.economics())
    tokens_per_s = busy * replicas * point.total_tokens_per_s
    hourly = price.usd_per_device_hour * devices
    result = calculate(
        TcoInputs(
            usd_per_hour=hourly,
            tokens_per_s=dec(tokens_per_s),
            energy_overhead=energy_overhead,
            network_overhead=network_overhead,
            watts=watts * devices,
            pue=region.pue,
            usd_per_kwh=Decimal(0) if price.energy_included else region.usd_per_kwh,
            grid_g_per_kwh=intensity.g_per_kwh,
        )
    )
    share = (point.input_tokens + point.output_tokens) / point.output_tokens
    energy_j = result.energy_j_per_token or 0.0
    co2e = result.co2e_g_per_1k_tokens or 0.0
    energy_usd_per_hour = Decimal(0)
    if not price.energy_included:
        energy_usd_per_hour = dec(watts * devices * region.pue / 1000) * region.usd_per_kwh
    overheads = 1 + energy_overhead + network_overhead
    return Economics(
        region_key,
        replicas,
        devices,
        busy,
        price,
        hourly * overheads + energy_usd_per_hour,
        result.usd_per_1k_tokens,
        result.usd_per_1k_tokens * dec(share),
        watts,
        energy_j,
        energy_j * share,
        co2e,
        co2e * share,
        intensity.g_per_kwh,
        intensity.source,
        region.pue,
    )
