"""$/1K tokens, J/token and gCO2e/1K tokens for one load point, from margin's economics code.

Self-hosted (TCO): the run's wall time is paid for at `usd_per_hour` (× overheads), whatever the backend's
utilization, so $/1K tokens = hourly ÷ (3600 × observed total tokens/s) × 1000 (DESIGN §4, `tco.calculate`).
Energy: the run's IT energy (measured or estimated) × PUE, priced at usd_per_kwh on top when given.
API models: list price × each request's tokens (genai-prices or a price given on the command line)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from margin.bench.energy import EnergyReading
from margin.config import ModelConfig, RegionConfig, Settings
from margin.economics.carbon import GridIntensity, GridTable
from margin.economics.money import THOUSAND, dec, usd_str
from margin.economics.prices import PriceBook
from margin.economics.tco import TcoInputs, calculate
from margin.errors import ConfigError, InvalidRequest


@dataclass(frozen=True, slots=True)
class EconSpec:
    usd_per_hour: Decimal | None = None
    energy_overhead: Decimal = Decimal(0)
    network_overhead: Decimal = Decimal(0)
    power_w: float | None = None
    idle_w: float | None = None
    region: RegionConfig = field(default_factory=RegionConfig)
    region_label: str | None = None
    price_model: str | None = None  # price the tokens at this API model's list price (genai-prices)
    source: str = "command line"

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "usd_per_hour": None if self.usd_per_hour is None else str(self.usd_per_hour),
            "energy_overhead": str(self.energy_overhead),
            "network_overhead": str(self.network_overhead),
            "power_w": self.power_w,
            "idle_w": self.idle_w,
            "region": self.region_label,
            "pue": self.region.pue,
            "usd_per_kwh": str(self.region.usd_per_kwh),
            "price_model": self.price_model,
        }


def spec_from_config(settings: Settings, backend: str, price_model: str | None = None) -> EconSpec:
    """TCO, power, PUE, $/kWh and grid of a configured backend (its `hardware` and region)."""
    if backend not in settings.backends:
        raise ConfigError(f"no backend {backend!r} in the config; known: {', '.join(settings.backends)}")
    config = settings.backends[backend]
    hw = config.hardware
    return EconSpec(
        usd_per_hour=hw.usd_per_hour if hw else None,
        energy_overhead=hw.energy_overhead if hw else Decimal(0),
        network_overhead=hw.network_overhead if hw else Decimal(0),
        power_w=hw.watts_busy if hw else None,
        idle_w=hw.watts_idle if hw else None,
        region=settings.region(config.region),
        region_label=config.region,
        price_model=price_model,
        source=f"config backend {backend!r}",
    )


def grid_for(spec: EconSpec) -> GridIntensity:
    grid = GridTable.bundled().intensity(spec.region)
    if spec.region.grid_zone and grid.source == "world-average":
        raise InvalidRequest(f"unknown region {spec.region.grid_zone!r}: use an ISO alpha-3 code (FRA) or gcp:<region>")
    return grid


def compute(
    spec: EconSpec, metrics: dict[str, Any], energy: EnergyReading, per_request: list[tuple[int, int]]
) -> dict[str, Any]:
    """The economics block. `per_request` holds (input, output) tokens of each completed request."""
    tokens = int(metrics["input_tokens"]) + int(metrics["output_tokens"])
    out_tokens = int(metrics["output_tokens"])
    grid = grid_for(spec)
    duration = float(metrics["duration_s"])
    block: dict[str, Any] = {
        "inputs": spec.describe(),
        "grid_g_per_kwh": grid.g_per_kwh,
        "grid_source": grid.source,
        "energy_method": energy.method,
        "energy_detail": energy.detail,
        "it_energy_j": None if energy.it_j is None else round(energy.it_j, 4),
        "facility_energy_j": None if energy.it_j is None else round(energy.it_j * spec.region.pue, 4),
        "tco_usd_per_1k_tokens": None,
        "tco_usd_per_1k_output_tokens": None,
        "list_usd_per_1k_tokens": None,
        "list_price_version": None,
        "j_per_token": None,
        "j_per_output_token": None,
        "co2e_g_per_1k_tokens": None,
    }
    if tokens == 0 or duration <= 0:
        return block
    watts = None if energy.it_j is None else energy.it_j / duration
    result = calculate(
        TcoInputs(
            spec.usd_per_hour or Decimal(0),
            dec(tokens / duration),
            spec.energy_overhead,
            spec.network_overhead,
            watts,
            spec.region.pue,
            spec.region.usd_per_kwh,
            grid.g_per_kwh,
        )
    )
    if spec.usd_per_hour is not None:
        block["tco_usd_per_1k_tokens"] = usd_str(result.usd_per_1k_tokens, 9)
        if out_tokens:
            per_out = result.usd_per_1k_tokens * Decimal(tokens) / Decimal(out_tokens)
            block["tco_usd_per_1k_output_tokens"] = usd_str(per_out, 9)
    if result.energy_j_per_token is not None:
        block["j_per_token"] = _sig(result.energy_j_per_token)
        block["j_per_output_token"] = _sig(result.energy_j_per_token * tokens / out_tokens) if out_tokens else None
        block["co2e_g_per_1k_tokens"] = (
            None if result.co2e_g_per_1k_tokens is None else _sig(result.co2e_g_per_1k_tokens)
        )
    if spec.price_model:
        block.update(_list_price(spec.price_model, per_request, tokens))
    return block


def _sig(value: float, digits: int = 6) -> float:
    """Rounded to significant digits (J/token and g/1K tokens span many orders of magnitude)."""
    return float(f"{value:.{digits}g}")


def _list_price(model: str, per_request: list[tuple[int, int]], tokens: int) -> dict[str, Any]:
    price = PriceBook().list_price(model, ModelConfig(backend="bench"), None)
    if price is None:
        return {"list_price_version": None, "list_price_note": f"no list price known for {model!r}"}
    total = sum((price.cost(i, o) for i, o in per_request), Decimal(0))
    return {
        "list_usd_per_1k_tokens": usd_str(total / Decimal(tokens) * THOUSAND, 9),
        "list_usd_total": usd_str(total, 9),
        "list_price_version": price.version,
    }
