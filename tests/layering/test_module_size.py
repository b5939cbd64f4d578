"""Modules stay under ~500 lines (the project's rule): one past it is split by what it holds, as the config's
price models were (margin.price_config)."""

from __future__ import annotations

from pathlib import Path

import margin
from margin.config import ModelConfig
from margin.price_config import PriceConfig, TierPriceConfig

LIMIT = 500
SRC = Path(margin.__file__).parent


def test_every_module_is_at_most_500_lines() -> None:
    sizes = {
        path.relative_to(SRC).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in SRC.rglob("*.py")
    }
    assert len(sizes) > 100  # the walk did find the package
    assert {name: lines for name, lines in sizes.items() if lines > LIMIT} == {}


def test_a_models_price_is_the_price_modules_model() -> None:
    model = ModelConfig.model_validate(
        {
            "backend": "b",
            "price": {"input": "1", "output": "2", "service_tiers": {"flex": {"input": "0.5", "output": "1"}}},
        }
    )
    assert isinstance(model.price, PriceConfig)
    assert isinstance(model.price.service_tiers["flex"], TierPriceConfig)
