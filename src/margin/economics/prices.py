"""API list prices: config overrides first, else the `genai-prices` package (offline data, Decimal).

A model whose price is unknown is priced NULL and flagged `unknown_price`, never 0. The resolved
genai-prices entry is cached per model and processing tier, so the request path does plain Decimal arithmetic.

Tiers (`service_tier`, margin.economics.tiers): `auto`, `default` and none are the standard price. `flex` and
`priority` are genai-prices' price variants for that tier (`price_context`), or the config's
`price.service_tiers`; a model with no price for the tier is unpriced there, never charged the standard rate."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from margin.backend_config import HttpBackendConfig
from margin.config import ModelConfig
from margin.economics.money import MILLION
from margin.economics.tiers import PRICED, STANDARD
from margin.price_config import PriceConfig


@dataclass(frozen=True, slots=True)
class ListPrice:
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_per_mtok: Decimal | None
    version: str
    _exact: Any = None  # genai-prices ModelPrice, when its prices are tiered
    cache_write_per_mtok: Decimal | None = None  # None: cache writes at the input rate

    def cost(
        self, input_tokens: int, output_tokens: int, cached_tokens: int = 0, cache_write_tokens: int = 0
    ) -> Decimal:
        """`cached_tokens` (cache reads) and `cache_write_tokens` are parts of `input_tokens`."""
        if self._exact is not None:
            from genai_prices import Usage

            usage = Usage(
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cache_read_tokens=cached_tokens or None,
                cache_write_tokens=cache_write_tokens or None,
            )
            return Decimal(self._exact.calc_price(usage)["total_price"])
        cached_rate = self.input_per_mtok if self.cached_per_mtok is None else self.cached_per_mtok
        write_rate = self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok
        fresh = input_tokens - cached_tokens - cache_write_tokens
        total = (
            fresh * self.input_per_mtok
            + cached_tokens * cached_rate
            + cache_write_tokens * write_rate
            + output_tokens * self.output_per_mtok
        )
        return total / MILLION


def _from_config(price: PriceConfig, tier: str | None) -> ListPrice | None:
    version = f"config:{price.version}"
    if tier is None:
        return ListPrice(
            price.input, price.output, price.cached_input, version, cache_write_per_mtok=price.cache_write_input
        )
    found = next((tiered for name, tiered in price.service_tiers.items() if name == tier), None)
    return None if found is None else ListPrice(found.input, found.output, found.cached_input, version)


def _has_variant(model: Any, tier: str) -> bool:
    """Whether genai-prices prices `model` at `tier` (a price variant for it); else its answer is the standard."""
    return any(variant.when == {"service_tier": tier} for variant in model.price_variants or ())


def _from_genai_prices(ref: str, backend: HttpBackendConfig | None, tier: str | None = None) -> ListPrice | None:
    import genai_prices
    from genai_prices import Usage

    kwargs: dict[str, Any] = {}
    if backend is not None and backend.provider:
        kwargs["provider_id"] = backend.provider
    elif backend is not None:
        kwargs["provider_api_url"] = backend.base_url
    try:
        found = genai_prices.calc_price(Usage(input_tokens=0, output_tokens=0), ref, **kwargs)
    except LookupError:
        if not kwargs:
            return None
        try:  # the base URL may be a proxy: fall back to matching the model name alone
            found = genai_prices.calc_price(Usage(input_tokens=0, output_tokens=0), ref)
        except LookupError:
            return None
    mp = found.model_price
    if tier is not None:  # the model's own variant for the tier (genai-prices' `price_context`), if it has one
        if not _has_variant(found.model, tier):
            return None
        mp = found.model.get_prices(datetime.now(UTC), {"service_tier": tier})
    version = f"genai-prices@{genai_prices.__version__}:{found.provider.id}/{found.model.id}"
    rates = (mp.input_mtok, mp.output_mtok, mp.cache_read_mtok, mp.cache_write_mtok)
    if not all(isinstance(rate, Decimal | None) for rate in rates):  # tiered prices: let genai-prices compute
        return ListPrice(Decimal(0), Decimal(0), None, version, _exact=mp)
    inp, out, cached, writes = (rate if isinstance(rate, Decimal) else None for rate in rates)
    return ListPrice(inp or Decimal(0), out or Decimal(0), cached, version, cache_write_per_mtok=writes)


class PriceBook:
    """Resolves and caches list prices by public model name and processing tier (`service_tier`)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str | None], ListPrice | None] = {}

    def list_price(self, public: str, model: ModelConfig, backend: Any, tier: str | None = None) -> ListPrice | None:
        """The price of `public` at `tier` (None, `auto`, `default`: the standard price). A tier other than those
        and `flex` / `priority` (`scale`, or whatever an upstream answers) has none, and is not looked up: the
        cache holds at most three prices a model, whatever the upstreams answer."""
        if tier is not None and tier not in STANDARD and tier not in PRICED:
            return None
        key = (public, None if tier in STANDARD else tier)
        if key not in self._cache:
            if model.price is not None:
                self._cache[key] = _from_config(model.price, key[1])
            else:
                ref = model.price_ref or model.upstream_model or public
                hosted = backend if isinstance(backend, HttpBackendConfig) else None
                self._cache[key] = _from_genai_prices(ref, hosted, key[1])
        return self._cache[key]
