"""Cost, energy and carbon of a configuration through margin's TCO formula (DESIGN §4)."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import cast

import pytest

from margin.plan.catalog import Catalog, Price, Region
from margin.plan.econ import device_watts, economics, pricing, replicas_for
from margin.plan.perf import Setup, serve


def _with_test_region(catalog: Catalog, usd_per_hour: str) -> Catalog:
    hw = catalog.get_hardware("l4")
    price = Price(
        provider="test",
        instance="t",
        usd_per_hour=Decimal(usd_per_hour),
        as_of="2026-12",
        confidence="estimate",
        source="test",
    )
    region = Region(
        name="t",
        provider="test",
        jurisdiction="EU",
        grid_g_per_kwh=100.0,
        pue=1.2,
        usd_per_kwh=Decimal("0.30"),
        offers=["l4"],
    )
    return dataclasses.replace(
        catalog,
        hardware={**catalog.hardware, "l4": hw.model_copy(update={"prices": [price]})},
        regions={**catalog.regions, "test": region},
    )


def test_design_section_4_example_10_usd_per_hour_at_33_tokens_per_s(catalog: Catalog) -> None:
    """$10/h ÷ (33 tok/s × 3600) = $0.0000842/token, × (1 + 0.20 + 0.10) ≈ $0.109 per 1K tokens."""
    cat = _with_test_region(catalog, "10")
    setup = Setup(cat, "llama-3.1-8b", "l4", "fp8", "fp8")
    point = dataclasses.replace(serve(setup, 100, 100, 1), total_tokens_per_s=33.0)
    econ = economics(setup, "test", point, None, Decimal("0.20"), Decimal("0.10"))
    assert econ is not None
    assert econ.usd_per_1k_tokens == Decimal(10) / 3600 / Decimal(33) * Decimal("1.30") * 1000
    assert econ.usd_per_1k_tokens.quantize(Decimal("0.001")) == Decimal("0.109")
    assert econ.usd_per_hour == Decimal("13.0")  # energy is in a rented device's price: no $/kWh on top
    watts = 72 * 0.85  # L4 TDP × the gpu-gddr busy power fraction
    assert econ.j_per_token == pytest.approx(watts * 1.2 / 33)
    assert econ.co2e_g_per_1k_tokens == pytest.approx(watts * 1.2 / 33 * 1000 / 3.6e6 * 100)
    assert econ.usd_per_1k_output_tokens == econ.usd_per_1k_tokens * 2  # 100 in + 100 out


def test_owned_hardware_is_amortized_plus_colocation_and_metered_energy(catalog: Catalog) -> None:
    price = pricing(catalog.get_hardware("h100-sxm"), catalog.get_region("owned-de"))
    assert price is not None and not price.energy_included
    expected = Decimal(30000) / (Decimal(4) * Decimal(8766)) + Decimal(180) * Decimal("0.7") / Decimal(730)
    assert price.usd_per_device_hour == expected
    setup = Setup(catalog, "llama-3.1-8b", "h100-sxm", "fp8", "fp8")
    point = serve(setup, 1000, 200, 64)
    econ = economics(setup, "owned-de", point)
    assert econ is not None
    energy = Decimal(repr(700 * 0.8 * 1.56 / 1000)) * Decimal("0.20")
    assert econ.usd_per_hour == pytest.approx(expected + energy)
    assert pricing(catalog.get_hardware("tpu-v5e"), catalog.get_region("owned-de")) is None  # no purchase price


def test_replicas_and_utilization_follow_the_rate(catalog: Catalog) -> None:
    setup = Setup(catalog, "llama-3.1-8b", "h100-sxm", "fp8", "fp8")
    point = serve(setup, 1000, 200, 64)
    replicas, busy = replicas_for(point, 2.5 * point.requests_per_s)
    # cast(object, ...): mypy takes the tuples of float and Approx for non-overlapping
    assert (replicas, busy) == (3, cast(object, pytest.approx(2.5 / 3)))
    assert replicas_for(point, None) == (1, 1.0)
    assert device_watts(setup, 0.0) == 75 and device_watts(setup, 1.0) == pytest.approx(560)
    cheap = economics(setup, "lambda-us", point, rate_rps=point.requests_per_s)
    idle = economics(setup, "lambda-us", point, rate_rps=point.requests_per_s / 4)
    assert cheap is not None and idle is not None
    assert idle.usd_per_1k_tokens == pytest.approx(
        cheap.usd_per_1k_tokens * 4, rel=Decimal("1e-9")
    )  # idle capacity is paid for
    assert economics(setup, "gcp-us-east1", point) is None  # that region does not price an H100
