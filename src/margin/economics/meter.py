"""Per-request economics: $ cost (list price or self-hosted TCO), energy (J) and carbon (gCO2e)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from margin.config import ModelConfig, Settings
from margin.economics import energy as energy_mod
from margin.economics.carbon import GridIntensity, GridTable, co2e_grams
from margin.economics.curves import CurveSource
from margin.economics.prices import PriceBook
from margin.economics.tco import busy_cost
from margin.types import Usage

ON_HOST_KINDS = frozenset({"llamacpp", "sentence_transformers"})


@dataclass(slots=True)
class Charge:
    cost_usd: Decimal | None
    cost_status: str  # priced | unknown_price | free
    cost_method: str | None  # list | tco
    price_version: str | None
    energy_j: float | None  # facility energy (IT × PUE)
    energy_method: str | None  # measured | modelled
    pue: float | None
    co2e_g: float | None
    grid_g_per_kwh: float | None
    grid_source: str | None
    busy_s: float | None = None  # backend busy time billed to the request (self-hosted backends)
    discount_usd: Decimal | None = None  # taken off the metered cost (batch lines); cost_usd is after it


def discounted(charge: Charge, share: Decimal) -> Charge:
    """The charge with `share` of its cost taken off (the batch discount); an unknown cost stays unknown."""
    if charge.cost_usd is None or not share:
        return charge
    off = charge.cost_usd * share
    return dataclasses.replace(charge, cost_usd=charge.cost_usd - off, discount_usd=off)


def _known_sum(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else a + b


def plus(charge: Charge, earlier: Charge | None) -> Charge:
    """`charge` (the attempt that answered) with what the request's earlier attempts were charged added: a
    fallback's row carries every attempt the upstreams may bill (one that failed after it was sent: a 5xx, a
    broken answer, usage reported beside an error). The cost is unknown when either is (never counted as $0);
    energy, carbon and busy time add what is known; the price version and method are the answering attempt's."""
    if earlier is None:
        return charge
    cost = None if charge.cost_usd is None or earlier.cost_usd is None else charge.cost_usd + earlier.cost_usd
    status = charge.cost_status
    if cost is None:
        status = "unknown_price"
    elif earlier.cost_status == "priced":
        status = "priced"
    discount = None
    if charge.discount_usd is not None or earlier.discount_usd is not None:
        discount = (charge.discount_usd or Decimal(0)) + (earlier.discount_usd or Decimal(0))
    energy = _known_sum(charge.energy_j, earlier.energy_j)
    co2e = _known_sum(charge.co2e_g, earlier.co2e_g)
    busy = _known_sum(charge.busy_s, earlier.busy_s)
    return dataclasses.replace(
        charge, cost_usd=cost, cost_status=status, energy_j=energy, co2e_g=co2e, busy_s=busy, discount_usd=discount
    )


class SharedClock:
    """Splits a backend's busy time among its concurrent requests (processor sharing):
    a request's share is ∫ 1/n(t) dt over its lifetime, so idle time is never billed to anyone."""

    def __init__(self) -> None:
        self.active = 0
        self._acc = 0.0
        self._last = time.perf_counter()

    def _advance(self) -> None:
        now = time.perf_counter()
        if self.active:
            self._acc += (now - self._last) / self.active
        self._last = now

    def enter(self) -> float:
        self._advance()
        self.active += 1
        return self._acc

    def leave(self, mark: float) -> float:
        self._advance()
        self.active -= 1
        return self._acc - mark


class Meter:
    def __init__(
        self,
        settings: Settings,
        grid: GridTable,
        prices: PriceBook,
        rapl: energy_mod.RaplMeter | None = None,
        curves: CurveSource | None = None,
    ) -> None:
        self.settings = settings
        self.curves = curves or CurveSource(settings.grid, settings.regions)
        self.grid = grid
        self.prices = prices
        self.rapl = rapl or energy_mod.RaplMeter()
        # RAPL measures this machine: it only says something about backends that run in this process
        self._on_host = {name for name, b in settings.backends.items() if b.kind in ON_HOST_KINDS}
        self.clocks = {name: SharedClock() for name in settings.backends}
        self._grid_cache: dict[str, GridIntensity] = {}
        if self.curves.used:
            self.curves.current()  # a file or the bundled set: bad zones fail at start, not on a request

    def probe(self, backend_name: str) -> energy_mod.Probe | None:
        return self.rapl.probe() if backend_name in self._on_host else None

    def measured_j(self, probe: energy_mod.Probe | None, busy_s: float | None) -> float | None:
        return None if probe is None or busy_s is None else self.rapl.measure(probe, busy_s)

    def grid_at(self, region_name: str, at: datetime | None = None) -> tuple[GridIntensity, Decimal]:
        """The region's grid intensity and $/kWh for the hour of `at` (now): its curve's hour when it has one
        (`regions.*.curve`), else the static value."""
        region = self.settings.region(region_name)
        if region.curve:
            value = self.curves.at(region.curve, at or datetime.now(UTC))
            if value is not None:
                price = value.usd_per_kwh if region.price_curve and value.usd_per_kwh is not None else None
                return GridIntensity(value.g_per_kwh, value.source), region.usd_per_kwh if price is None else price
        if region_name not in self._grid_cache:
            self._grid_cache[region_name] = self.grid.intensity(region)
        return self._grid_cache[region_name], region.usd_per_kwh

    def charge(
        self,
        public: str,
        model: ModelConfig,
        usage: Usage,
        busy_s: float,
        measured_j: float | None = None,
        at: datetime | None = None,
        priced_j_cap: float | None = None,
        tier: str | None = None,
    ) -> Charge:
        """Cost, energy and carbon of `usage` on `model`'s backend, with the grid of the hour of `at` (now).
        `priced_j_cap`: the most IT energy the cost may count (a hard budget's busy-time allowance: what its
        reservation priced); a measured reading above it stays the row's energy and carbon, its cost is held.
        `tier`: the processing tier that served it (`service_tier`; list prices only)."""
        backend = self.settings.backends[model.backend]
        region = self.settings.region(backend.region)
        grid, usd_per_kwh = self.grid_at(backend.region, at)
        hardware = backend.hardware
        energy = None
        if measured_j is not None:
            energy = energy_mod.EnergyReading(measured_j, "measured")
        elif hardware is not None:
            energy = energy_mod.modelled(hardware.watts_busy, busy_s)
        facility_j = energy.it_j * region.pue if energy else None
        priced_j = facility_j
        if priced_j is not None and priced_j_cap is not None:
            priced_j = min(priced_j, priced_j_cap * region.pue)
        cost, status, method, version = self._cost(public, model, usage, busy_s, priced_j, usd_per_kwh, tier)
        return Charge(
            cost_usd=cost,
            cost_status=status,
            cost_method=method,
            price_version=version,
            energy_j=facility_j,
            energy_method=energy.method if energy else None,
            pue=region.pue if energy else None,
            co2e_g=co2e_grams(facility_j, grid.g_per_kwh) if facility_j is not None else None,
            grid_g_per_kwh=grid.g_per_kwh,
            grid_source=grid.source,
            busy_s=busy_s if hardware is not None else None,
        )

    def cost_usd(
        self, public: str, model: ModelConfig, usage: Usage, busy_s: float, tier: str | None = None
    ) -> Decimal | None:
        """`charge(public, model, usage, busy_s, tier=tier).cost_usd` alone (admission's worst case, priced per
        request): a list-priced model needs no energy, grid or carbon to price. Where a backend's upstream may
        write the whole prompt to its prompt cache (`anthropic`), which costs more than input: the dearer of the
        two."""
        backend = self.settings.backends[model.backend]
        if backend.hardware is not None:
            return self.charge(public, model, usage, busy_s).cost_usd
        price = self.prices.list_price(public, model, backend, tier)
        if price is None:
            return None
        cost = price.cost(usage.input_tokens, usage.output_tokens, usage.cached_tokens, usage.cache_write_tokens)
        if backend.writes_prompt_cache:
            cost = max(cost, price.cost(usage.input_tokens, usage.output_tokens, 0, usage.input_tokens))
        if price.cached_per_mtok is not None and price.cached_per_mtok > price.input_per_mtok:
            # cache reads dearer than input (genai-prices has such a model; the config refuses one): the whole
            # prompt may be reported read from the cache
            cost = max(cost, price.cost(usage.input_tokens, usage.output_tokens, usage.input_tokens))
        return cost

    def _cost(
        self,
        public: str,
        model: ModelConfig,
        usage: Usage,
        busy_s: float,
        facility_j: float | None,
        usd_per_kwh: Decimal,
        tier: str | None = None,
    ) -> tuple[Decimal | None, str, str, str | None]:
        backend = self.settings.backends[model.backend]
        hardware = backend.hardware
        if hardware is not None:
            cost = busy_cost(
                hardware.usd_per_hour,
                busy_s,
                energy_overhead=hardware.energy_overhead,
                network_overhead=hardware.network_overhead,
                facility_energy_j=facility_j,
                usd_per_kwh=usd_per_kwh,
            )
            return cost, "priced", "tco", f"tco:{model.backend}"
        price = self.prices.list_price(public, model, backend, tier)
        if price is None:
            return None, "unknown_price", "list", None
        cost = price.cost(usage.input_tokens, usage.output_tokens, usage.cached_tokens, usage.cache_write_tokens)
        return cost, "priced", "list", price.version
