"""Carbon- and cost-aware routes for live traffic: the pure choice, the route through the gateway, the
ledger's record of the choice and its counterfactual, residency first, and the savings view."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from margin.report.metrics import savings
from margin.report.queries import Window
from margin.routing.prefer import Option, preferred_order
from tests.helpers import fake_settings, gateway

HARDWARE = {"usd_per_hour": "3.60", "watts_busy": 1000, "tokens_per_s": 100}


def test_preferred_order_lowest_first_unknowns_last_ties_keep_the_default_order() -> None:
    options = [
        Option(5.0, Decimal("3")),
        Option(None, Decimal("1")),
        Option(1.0, Decimal("2")),
        Option(5.0, None),
    ]
    assert preferred_order(options, "carbon") == [2, 0, 3, 1]
    assert preferred_order(options, "cost") == [1, 2, 0, 3]
    assert preferred_order([Option(1.0, None), Option(1.0, None)], "carbon") == [0, 1]
    assert preferred_order([], "cost") == []


def two_regions(db: Path, regions: dict[str, Any] | None = None, **overrides: Any) -> Any:
    base = {
        "eu": {"jurisdiction": "EU", "grid_g_per_kwh": 50, "usd_per_kwh": "0.30"},
        "us": {"jurisdiction": "US", "grid_g_per_kwh": 500, "usd_per_kwh": "0.10"},
    }
    return fake_settings(
        db,
        regions={name: {**value, **(regions or {}).get(name, {})} for name, value in base.items()},
        backends={
            "b-eu": {"kind": "fake", "region": "eu", "ttft_ms": 5, "hardware": HARDWARE},
            "b-us": {"kind": "fake", "region": "us", "ttft_ms": 5, "hardware": HARDWARE},
        },
        models={"m-eu": {"backend": "b-eu"}, "m-us": {"backend": "b-us"}},
        routes={
            "green": {"policy": "lowest-carbon", "ladder": ["m-us", "m-eu"]},
            "thrifty": {"policy": "lowest-cost", "ladder": ["m-eu", "m-us"]},
        },
        **overrides,
    )


async def _ask(gw: Any, model: str) -> Any:
    reply = await gw.http.post(
        "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi there"}]}
    )
    assert reply.status_code == 200, reply.text
    return reply


async def test_green_route_serves_from_the_clean_region_and_records_the_counterfactual(db_path: Path) -> None:
    async with gateway(two_regions(db_path)) as gw:
        await _ask(gw, "green")
        await _ask(gw, "thrifty")
        green, thrifty = await gw.rows()
        engine = gw.services.sync_engine()
        found = savings(engine, Window())
    assert (green.model, green.route_pref, green.route_default) == ("m-eu", "carbon", "m-us")
    # same hardware and tokens: the default would have emitted 10x as much (500 vs 50 g/kWh)
    assert abs(green.default_co2e_g - 10 * green.co2e_g) < 1e-9 * green.default_co2e_g
    assert green.default_cost_nanousd < green.cost_nanousd  # dearer energy in the clean region
    assert (thrifty.model, thrifty.route_pref, thrifty.route_default) == ("m-us", "cost", "m-eu")
    assert thrifty.default_cost_nanousd > thrifty.cost_nanousd
    levers = found.levers
    assert (levers.preferred_requests, levers.preferred_moved, levers.preferred_unknown) == (2, 2, 0)
    expected_g = (green.default_co2e_g - green.co2e_g) + (thrifty.default_co2e_g - thrifty.co2e_g)
    assert abs(levers.preferred_saved_co2e_g - expected_g) < 2e-9  # summed in ng: the default rounded to 1 ng
    expected_ng = sum(int(r.default_co2e_g * 1e9 + 0.5) - r.co2e_ng for r in (green, thrifty))
    assert levers.preferred_saved_co2e_g == expected_ng / 1e9
    saved_nano = (green.default_cost_nanousd - green.cost_nanousd) + (
        thrifty.default_cost_nanousd - thrifty.cost_nanousd
    )
    assert levers.preferred_saved_usd == Decimal(saved_nano) / Decimal(10**9)
    assert found.to_json()["preferred_requests"] == 2
    assert found.counterfactual_cost_usd == found.actual_cost_usd + levers.preferred_saved_usd


async def test_residency_comes_before_carbon(db_path: Path) -> None:
    async with gateway(two_regions(db_path, policies={"default": {"jurisdictions": ["US"]}})) as gw:
        await _ask(gw, "green")
        (row,) = await gw.rows()
    assert (row.model, row.region, row.route_pref, row.route_default) == ("m-us", "us", "carbon", "m-us")
    assert row.default_co2e_g == row.co2e_g  # the only allowed candidate is the default: nothing moved


async def test_the_meter_uses_the_curve_of_the_hour(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from margin.types import Usage

    curves = tmp_path / "c.csv"
    curves.write_text(
        "zone,year,month,hour_utc,g_co2e_per_kwh,usd_per_kwh\n"
        + "".join(f"Z,2025,{m},{h},{100 + h},{h / 100}\n" for m in range(1, 13) for h in range(24))
    )
    settings = two_regions(
        tmp_path / "l.db",
        grid={"curves": str(curves)},
        regions={"eu": {"curve": "Z", "price_curve": True}},
    )
    async with gateway(settings) as gw:
        meter, target = gw.services.meter, gw.services.targets["m-eu"]
        at = datetime(2026, 3, 4, 7, 30, tzinfo=UTC)
        charge = meter.charge("m-eu", target.model, Usage(10, 10), 1.0, at=at)
        assert (charge.grid_g_per_kwh, charge.grid_source) == (107.0, "curve:Z/2025-03T07")
        later = meter.charge("m-eu", target.model, Usage(10, 10), 1.0, at=at.replace(hour=20))
        assert later.grid_g_per_kwh == 120.0 and later.cost_usd is not None and charge.cost_usd is not None
        assert later.cost_usd > charge.cost_usd  # the hour's price ($0.20/kWh against $0.07) is in the cost
        await _ask(gw, "m-eu")
        (row,) = await gw.rows()
        async with gw.services.engine.connect() as connection:
            stored = (await connection.execute(sa.text("SELECT grid_source FROM ledger"))).scalar()
        assert stored is not None and stored.startswith("curve:Z/2025-")  # the intensity actually used
        assert row.grid_g_per_kwh == 100 + int(stored[-2:])  # the value of the hour it names
