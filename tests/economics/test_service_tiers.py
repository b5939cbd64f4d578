"""OpenAI's processing tiers (`service_tier`): flex (about half price) and priority (about 1.8×) priced from
genai-prices' price variants or the config, reserved at the dearest tier a request may be served at and
charged at the tier that served it. gpt-5-mini is $0.25 / $2 per million tokens standard, $0.125 / $1 flex and
$0.45 / $3.60 priority in genai-prices' data; gpt-5-nano has a flex price and no priority one."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, cast

import genai_prices
import pytest

from margin.config import Settings, parse_settings
from margin.economics import tiers
from margin.economics.carbon import GridTable
from margin.economics.meter import Meter
from margin.economics.prices import PriceBook
from margin.governance import admission as adm
from margin.specs import AdmissionConfig
from margin.types import Target, Usage

MILLION = 1_000_000
OPENAI = "https://api.openai.com/v1"
STANDARD, FLEX, PRIORITY = Decimal("2.25"), Decimal("1.125"), Decimal("4.05")  # 1M in + 1M out, gpt-5-mini


def _settings() -> Settings:
    return parse_settings(
        {
            "backends": {
                "oa": {"kind": "openai", "base_url": OPENAI, "service_tiers": ["flex", "priority"]},
                "oa-plain": {"kind": "openai", "base_url": OPENAI},
                "local": {"kind": "fake"},
            },
            "models": {
                "mini": {"backend": "oa", "upstream_model": "gpt-5-mini"},
                "nano": {"backend": "oa", "upstream_model": "gpt-5-nano"},
                "mini-plain": {"backend": "oa-plain", "upstream_model": "gpt-5-mini"},
                "configured": {
                    "backend": "oa",
                    "price": {"input": "1", "output": "2", "service_tiers": {"flex": {"input": "0.5", "output": "1"}}},
                },
                "local": {"backend": "local", "price": {"input": "1", "output": "1"}},
            },
        }
    )


def _target(settings: Settings, public: str) -> Target:
    model = settings.models[public]
    return Target(public, model, model.backend, cast(Any, None), "default")


def _meter(settings: Settings) -> Meter:
    return Meter(settings, GridTable.bundled(), PriceBook())


def test_genai_prices_variants_price_each_tier() -> None:
    settings, book = _settings(), PriceBook()
    model, backend = settings.models["mini"], settings.backends["oa"]
    asked = (None, "auto", "default", "flex", "priority")
    prices = {tier: book.list_price("mini", model, backend, tier) for tier in asked}
    costs = {tier: price.cost(MILLION, MILLION) for tier, price in prices.items() if price is not None}
    assert costs == {None: STANDARD, "auto": STANDARD, "default": STANDARD, "flex": FLEX, "priority": PRIORITY}
    assert all(isinstance(cost, Decimal) for cost in costs.values())
    # a tier the model has no price for is unpriced, never charged the standard rate
    nano = settings.models["nano"]
    assert book.list_price("nano", nano, backend, "priority") is None
    assert book.list_price("nano", nano, backend, "scale") is None
    flex = book.list_price("nano", nano, backend, "flex")
    standard = book.list_price("nano", nano, backend)
    assert flex is not None and standard is not None and flex.cost(MILLION, MILLION) < standard.cost(MILLION, MILLION)


def test_a_tiers_price_is_resolved_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The request path does Decimal arithmetic: genai-prices' lookup runs once per model and tier."""
    settings, book = _settings(), PriceBook()
    model, backend = settings.models["mini"], settings.backends["oa"]
    calls = []
    real = genai_prices.calc_price

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(genai_prices, "calc_price", counted)
    for attempt in range(3):
        for tier in (None, "default", "auto", "flex", "priority"):
            assert book.list_price("mini", model, backend, tier) is not None
        for odd in ("scale", "fast", f"tier{attempt}"):  # what an upstream may answer: unpriced, never looked up
            assert book.list_price("mini", model, backend, odd) is None
    assert len(calls) == 3  # the standard price (None, default, auto share it), flex, priority


def test_config_prices_a_tier_only_where_it_says() -> None:
    settings = _settings()
    meter = _meter(settings)
    model = settings.models["configured"]
    usage = Usage(MILLION, MILLION)
    assert meter.charge("configured", model, usage, 0.1).cost_usd == Decimal(3)
    flex = meter.charge("configured", model, usage, 0.1, tier="flex")
    assert flex.cost_usd == Decimal("1.5") and flex.cost_status == "priced"
    priority = meter.charge("configured", model, usage, 0.1, tier="priority")
    assert priority.cost_usd is None and priority.cost_status == "unknown_price"


def test_the_charge_is_at_the_tier_served() -> None:
    settings = _settings()
    meter = _meter(settings)
    model, usage = settings.models["mini"], Usage(MILLION, MILLION)
    assert meter.charge("mini", model, usage, 0.1, tier="flex").cost_usd == FLEX
    assert meter.charge("mini", model, usage, 0.1, tier="priority").cost_usd == PRIORITY
    assert meter.charge("mini", model, usage, 0.1, tier="default").cost_usd == STANDARD
    assert meter.cost_usd("mini", model, usage, 0.1, "flex") == FLEX


def test_the_worst_case_is_the_dearest_tier_the_request_may_be_served_at() -> None:
    settings = _settings()
    meter, config = _meter(settings), AdmissionConfig()
    mini, plain, nano = (_target(settings, name) for name in ("mini", "mini-plain", "nano"))

    def worst(targets: list[Target], tier: str | None) -> tuple[Decimal, tuple[str, ...]]:
        return adm.worst_case_usd(meter, targets, MILLION, MILLION, config, tier=tier)

    # left to the upstream (none, `auto`): its project's default tier may be priority, which the backend allows
    assert worst([mini], None) == (PRIORITY, ()) and worst([mini], "auto") == (PRIORITY, ())
    assert worst([mini], "priority") == (PRIORITY, ())
    assert worst([mini], "flex") == (FLEX, ())
    assert worst([mini], "default") == (STANDARD, ())
    assert worst([plain], None) == (STANDARD, ())  # a backend without tiers serves the standard one
    assert worst([nano], "priority") == (Decimal(0), ("nano",))  # asked for a tier without a price: unpriced
    nano_standard, _ = worst([nano], "default")
    assert worst([nano], None) == (nano_standard, ())  # no priority price: not a tier nano is offered at
    assert worst([mini, nano], "flex")[0] == FLEX


def test_which_tiers_a_backend_allows_and_what_an_answer_says() -> None:
    settings = _settings()
    oa, plain, local = (settings.backends[name] for name in ("oa", "oa-plain", "local"))
    assert all(tiers.allows(backend, tier) for backend in (oa, plain, local) for tier in (None, "auto", "default"))
    assert tiers.allows(oa, "flex") and tiers.allows(oa, "priority")
    assert not any(tiers.allows(backend, tier) for backend in (plain, local) for tier in ("flex", "priority"))
    assert tiers.possible(None, oa) == (None, "flex", "priority") and tiers.possible("auto", plain) == ("auto",)
    assert tiers.possible("flex", oa) == ("flex",) and tiers.possible("default", oa) == ("default",)
    assert tiers.answered({"service_tier": "flex"}) == "flex"
    for odd in ({"service_tier": None}, {"service_tier": 3}, {"service_tier": "x" * 40}, {}, None, [1]):
        assert tiers.answered(odd) is None
    assert tiers.served("flex", "priority") == "flex" and tiers.served(None, "priority") == "priority"
