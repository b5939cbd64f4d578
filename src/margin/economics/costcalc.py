"""`margin cost`: the self-hosted cost calculator, printed or as JSON (decimal strings for money)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console

from margin.config import RegionConfig
from margin.economics.carbon import GridIntensity, GridTable
from margin.economics.money import usd_str
from margin.economics.tco import TcoInputs, TcoResult, calculate
from margin.errors import InvalidRequest
from margin.specs import MAX_OVERHEAD, MAX_PUE, MAX_USD_PER_HOUR, MAX_USD_PER_KWH, MAX_WATTS
from margin.userfiles import validation_message


class CostInputs(BaseModel):
    """The calculator's numbers, checked before any arithmetic: finite, not negative, and within what a real
    deployment could be (before: a negative price or power printed negative costs, 0 tok/s was a traceback,
    1e309 $/h or 1e-300 tok/s a decimal.InvalidOperation traceback, NaN watts printed "$NaN")."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    hourly_usd: Decimal = Field(ge=0, le=MAX_USD_PER_HOUR)
    tokens_per_s: Decimal = Field(ge=Decimal("1e-6"), le=1_000_000_000)
    energy_overhead: Decimal = Field(ge=0, le=MAX_OVERHEAD)
    network_overhead: Decimal = Field(ge=0, le=MAX_OVERHEAD)
    watts: float | None = Field(ge=0, le=MAX_WATTS)
    pue: float = Field(ge=1, le=MAX_PUE)
    usd_per_kwh: Decimal = Field(ge=0, le=MAX_USD_PER_KWH)


def check_cost_inputs(**numbers: object) -> CostInputs:
    try:
        return CostInputs.model_validate(numbers)
    except ValidationError as exc:
        raise InvalidRequest(f"--{validation_message(exc, limit=1).replace('_', '-')}") from exc


def cost_command(
    console: Console,
    hourly_usd: Decimal,
    tokens_per_s: Decimal,
    energy_overhead: Decimal,
    network_overhead: Decimal,
    watts: float | None,
    pue: float,
    usd_per_kwh: Decimal,
    region: str | None,
    as_json: bool,
) -> None:
    n = check_cost_inputs(
        hourly_usd=hourly_usd,
        tokens_per_s=tokens_per_s,
        energy_overhead=energy_overhead,
        network_overhead=network_overhead,
        watts=watts,
        pue=pue,
        usd_per_kwh=usd_per_kwh,
    )
    if watts is None and (region or n.usd_per_kwh or n.pue != 1):  # they were ignored without a word
        raise InvalidRequest("--region, --usd-per-kwh and --pue price the power: give --watts too")
    grid = GridTable.bundled().intensity(RegionConfig(grid_zone=region)) if watts is not None else None
    if region and grid is not None and grid.source == "world-average":
        raise InvalidRequest(f"unknown region {region!r}: use an ISO alpha-3 code (FRA) or gcp:<region>")
    g_per_kwh = grid.g_per_kwh if grid else None
    inputs = TcoInputs(
        n.hourly_usd, n.tokens_per_s, n.energy_overhead, n.network_overhead, n.watts, n.pue, n.usd_per_kwh, g_per_kwh
    )
    result = calculate(inputs)
    if as_json:
        print(orjson.dumps(_data(n, region, result, grid)).decode())
    else:
        _show(console, n, result, grid)


def _data(n: CostInputs, region: str | None, result: TcoResult, grid: GridIntensity | None) -> dict[str, Any]:
    return {
        "inputs": {
            "hourly_usd": str(n.hourly_usd),
            "tokens_per_s": str(n.tokens_per_s),
            "energy_overhead": str(n.energy_overhead),
            "network_overhead": str(n.network_overhead),
            "watts": n.watts,
            "pue": n.pue,
            "usd_per_kwh": str(n.usd_per_kwh),
            "region": region,
        },
        "usd_per_token_before_overheads": usd_str(result.usd_per_token_base, 12),
        "usd_per_token": usd_str(result.usd_per_token, 12),
        "usd_per_1k_tokens": usd_str(result.usd_per_1k_tokens, 9),
        "usd_per_1m_tokens": usd_str(result.usd_per_token * 1_000_000, 6),
        "energy_j_per_token": result.energy_j_per_token,
        "energy_usd_per_1k_tokens": usd_str(result.energy_usd_per_1k_tokens, 9),
        "co2e_g_per_1k_tokens": result.co2e_g_per_1k_tokens,
        "grid_g_per_kwh": grid.g_per_kwh if grid else None,
        "grid_source": grid.source if grid else None,
    }


def _usd(value: Decimal, places: int) -> str:
    """`places` decimals, more where fewer would not show 2 significant digits (a cheap token is not $0.000000)."""
    if value:
        places = max(places, 1 - value.adjusted())
    return f"{value:.{places}f}"


def _show(console: Console, n: CostInputs, result: TcoResult, grid: GridIntensity | None) -> None:
    console.print(
        f"${_usd(result.usd_per_token_base, 6)}/token before overheads "
        f"(${n.hourly_usd}/h ÷ ({n.tokens_per_s} tok/s × 3600))"
    )
    factor = 1 + n.energy_overhead + n.network_overhead
    console.print(
        f"${_usd(result.usd_per_token, 7)}/token with overheads (× {factor}"
        + (" + metered energy" if result.energy_usd_per_1k_tokens else "")
        + ")"
    )
    console.print(
        f"≈${_usd(result.usd_per_1k_tokens, 3)} per 1K tokens, ${_usd(result.usd_per_token * 1_000_000, 2)} per 1M"
    )
    if result.energy_j_per_token is not None:
        console.print(
            f"energy: {result.energy_j_per_token:.4g} J/token (facility, PUE {n.pue}) = "
            f"{result.energy_j_per_token * 1000 / 3.6e6:.3e} kWh per 1K tokens"
        )
    if result.co2e_g_per_1k_tokens is not None and grid is not None:
        console.print(
            f"carbon: {result.co2e_g_per_1k_tokens:.4g} gCO2e per 1K tokens at {grid.g_per_kwh:g} g/kWh ({grid.source})"
        )
