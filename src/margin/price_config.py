"""The price models of the config file (a model's `price:`): list prices in USD per million tokens, standard and
per processing tier, bounded so that a request's cost stays inside the ledger's range. margin.config composes
them into a model's settings; and the revenue rules (`revenue:`) gross margin is reported against."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field

from margin.specs import MAX_USD_PER_MTOK, Spec

UsdPerMtok = Annotated[Decimal, Field(ge=0, le=MAX_USD_PER_MTOK)]  # at most $1 a token: see MAX_USD_PER_MTOK
PLAUSIBLE_USD_PER_MTOK = Decimal("0.001")  # below it, a price set above 0 reads as per-token (`margin config check`)


class TierPriceConfig(Spec):
    """A processing tier's list price in USD per million tokens (OpenAI's flex or priority)."""

    input: UsdPerMtok
    output: UsdPerMtok
    cached_input: UsdPerMtok | None = None

    def tiny_rates(self) -> list[str]:
        """The rates set above 0 but below $0.001 per million tokens (a billion tokens for a dollar): a per-token
        price written where per-million is read (`input: 0.0000025` for $2.50/M) prices a million times too low."""
        rates = {name: getattr(self, name) for name in type(self).model_fields if name.endswith(("input", "output"))}
        return [name for name, rate in rates.items() if rate is not None and 0 < rate < PLAUSIBLE_USD_PER_MTOK]

    def dear_cache_reads(self) -> bool:
        """A cache read above the input rate: loaded (a provider may bill one: genai-prices has such a model, and
        a hard budget reserves the prompt at the dearer rate), warned of by `margin config check` (often a typo
        for `cache_write_input`)."""
        return self.cached_input is not None and self.cached_input > self.input


class PriceConfig(TierPriceConfig):
    """List price in USD per million tokens, overriding genai-prices."""

    cache_write_input: UsdPerMtok | None = Field(
        None,
        description="Prompt-cache writes (an `anthropic` backend's `cache_creation_input_tokens`; Anthropic's "
        "5-minute writes cost 1.25× input); unset: the input rate.",
    )
    version: str = "config"
    service_tiers: dict[Literal["flex", "priority"], TierPriceConfig] = Field(
        default_factory=dict,
        description="Prices at OpenAI's flex / priority tiers. A tier without one here is unpriced (the row's "
        "cost is unknown), never priced at the standard rate.",
    )


class RevenueRule(Spec):
    """What a feature or customer earns (for gross margin). Per-seat prices are prorated over the report
    window with a month of 30 days."""

    price_per_call: Decimal | None = Field(None, ge=0, description="Revenue per successful request (USD).")
    price_per_seat_month: Decimal | None = Field(None, ge=0, description="USD per seat per month.")
    seats: int = Field(0, ge=0, description="Seats sold (with price_per_seat_month).")
    currency: Literal["USD"] = "USD"


class RevenueConfig(Spec):
    features: dict[str, RevenueRule] = Field(default_factory=dict, description="Keyed by the `feature` tag.")
    customers: dict[str, RevenueRule] = Field(default_factory=dict, description="Keyed by the `customer` tag.")
