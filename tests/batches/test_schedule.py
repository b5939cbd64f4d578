"""The scheduler's choices on hand-made curves: cheapest hours first within capacity, ties to the earliest
hour and the default deployment, unknown values last, and the saving against running now."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from margin.batches.planning import Planner, turn, used_capacity
from margin.batches.schedule import Slot, run_now, schedule
from margin.economics.carbon import GridTable
from margin.economics.curves import CurveSet, CurveSource
from margin.economics.meter import Meter
from margin.economics.prices import PriceBook
from margin.services import Services
from margin.types import Principal
from tests.helpers import fake_settings, gateway, polls

T0 = datetime(2026, 7, 1, 0, 0, tzinfo=UTC)
H = timedelta(hours=1)


def slots(curve: list[float], capacity: int | None = 100, option: str = "a", rank: int = 0) -> list[Slot]:
    return [Slot(option, rank, T0 + i * H, T0 + (i + 1) * H, capacity, g, Decimal(str(g))) for i, g in enumerate(curve)]


def test_cleanest_hours_first_within_capacity() -> None:
    found = schedule(slots([300, 100, 200, 50, 400]), 250, "carbon")
    # hours 1 (100 g), 3 (50 g) full, then half of hour 2 (200 g); adjacent hours form one window
    assert [(w.start.hour, w.end.hour, w.tokens) for w in found.windows] == [(1, 4, 250)]
    assert found.unplaced == 0 and found.co2e_g == 100 * 100 + 50 * 200 + 100 * 50
    split = schedule(slots([300, 100, 400, 50, 400]), 150, "carbon")
    assert [(w.start.hour, w.tokens) for w in split.windows] == [(1, 50), (3, 100)]


def test_adjacent_hours_merge_into_one_window() -> None:
    found = schedule(slots([500, 10, 20, 30, 500]), 300, "carbon")
    assert [(w.start.hour, w.end.hour, w.tokens) for w in found.windows] == [(1, 4, 300)]


def test_flat_curve_runs_at_once() -> None:
    found = schedule(slots([200] * 6), 150, "carbon")
    assert [(w.start.hour, w.end.hour, w.tokens) for w in found.windows] == [(0, 2, 150)]
    assert found.co2e_g == run_now(slots([200] * 6), 150).co2e_g


def test_work_beyond_capacity_is_reported_unplaced() -> None:
    found = schedule(slots([1, 2, 3]), 500, "carbon")
    assert sum(w.tokens for w in found.windows) == 300 and found.unplaced == 200


def test_no_capacity_limit_puts_everything_in_the_best_hour() -> None:
    found = schedule(slots([3, 1, 2], capacity=None), 10_000, "carbon")
    assert [(w.start.hour, w.tokens) for w in found.windows] == [(1, 10_000)]


def test_two_regions_choose_by_objective_and_tie_to_the_default() -> None:
    eu = [
        Slot("eu", 0, T0, T0 + H, 100, 50.0, Decimal("3")),
        Slot("eu", 0, T0 + H, T0 + 2 * H, 100, 50.0, Decimal("3")),
    ]
    us = [
        Slot("us", 1, T0, T0 + H, 100, 300.0, Decimal("1")),
        Slot("us", 1, T0 + H, T0 + 2 * H, 100, 50.0, Decimal("1")),
    ]
    green = schedule(eu + us, 250, "carbon")
    # 50 g in three slots: the earlier hour first, and within an hour the default (eu) before us
    assert [(w.option, w.start.hour, w.tokens) for w in green.windows] == [("eu", 0, 200), ("us", 1, 50)]
    cheap = schedule(eu + us, 250, "cost")
    assert sorted((w.option, w.tokens) for w in cheap.windows) == [("eu", 50), ("us", 200)]
    assert cheap.cost_usd == Decimal(200 * 1 + 50 * 3)


def test_unknown_values_are_used_last() -> None:
    known = Slot("api", 1, T0, T0 + H, 10, 9.0, Decimal(1))
    unknown = Slot("hosted", 0, T0, T0 + H, None, None, None)
    found = schedule([unknown, known], 30, "carbon")
    assert sorted((w.option, w.tokens) for w in found.windows) == [("api", 10), ("hosted", 20)]
    assert found.co2e_g is None  # part of it has no carbon figure


def test_turn_waits_for_the_first_window_and_runs_after_the_last() -> None:
    plan = {
        "windows": [{"model": "a", "start": (T0 + 3 * H).isoformat(), "end": (T0 + 5 * H).isoformat(), "tokens": 9}]
    }
    assert turn(plan, "a", T0).models == [] and turn(plan, "a", T0).wake == T0 + 3 * H
    assert turn(plan, "a", T0 + 4 * H).models == [("a", 9)]
    assert turn(plan, "a", T0 + 6 * H).models == [("a", 1)]  # estimates were short: run at once
    assert turn(None, "m", T0).models == [("m", 1)]


def test_other_jobs_plans_take_capacity() -> None:
    plan = {"windows": [{"backend": "b", "start": T0.isoformat(), "end": (T0 + 2 * H).isoformat(), "tokens": 100}]}
    assert used_capacity([plan, None]) == {("b", T0.isoformat()): 50, ("b", (T0 + H).isoformat()): 50}


ZONES: tuple[tuple[str, Callable[[int], int], Callable[[int], str]], ...] = (
    ("GREEN", lambda h: 400 if h < 12 else 40, lambda h: "0.30"),
    ("CHEAP", lambda h: 500, lambda h: "0.01"),
)
CURVES = "zone,year,month,hour_utc,g_co2e_per_kwh,usd_per_kwh\n" + "".join(
    f"{zone},2026,7,{h},{g(h)},{p(h)}\n" for zone, g, p in ZONES for h in range(24)
)


def _planner(tmp_path: Path, objective: str) -> tuple[Planner, Services]:
    curves = tmp_path / "curves.csv"
    curves.write_text(CURVES)
    hardware = {"usd_per_hour": "1.00", "watts_busy": 1000, "tokens_per_s": 10}
    settings = fake_settings(
        tmp_path / "l.db",
        grid={"curves": str(curves)},
        regions={
            "green": {"jurisdiction": "EU", "curve": "GREEN", "price_curve": True},
            "cheap": {"jurisdiction": "US", "curve": "CHEAP", "price_curve": True},
        },
        backends={
            "g": {"kind": "fake", "region": "green", "hardware": hardware},
            "c": {"kind": "fake", "region": "cheap", "hardware": hardware},
        },
        models={"m-green": {"backend": "g"}, "m-cheap": {"backend": "c"}},
        routes={"m": {"policy": "lowest-carbon", "ladder": ["m-green", "m-cheap"]}},
        batches={"objective": objective},
    )
    meter = Meter(settings, GridTable.bundled(), PriceBook(), curves=CurveSource(settings.grid, settings.regions))
    return Planner(settings, meter), Services(settings)


def test_plan_on_curves_waits_for_the_clean_hours_and_reports_the_saving(tmp_path: Path) -> None:
    planner, services = _planner(tmp_path, "carbon")
    options = [services.targets["m-green"], services.targets["m-cheap"]]
    plan = planner.plan(options, 36_000 * 2, T0, T0 + 24 * H, {})  # two hours of the green backend's capacity
    assert [(w["model"], w["start"][11:16], w["end"][11:16]) for w in plan["windows"]] == [
        ("m-green", "12:00", "14:00")
    ]
    assert plan["run_now"]["model"] == "m-green" and plan["unplaced_tokens"] == 0
    assert plan["saving"]["co2e_pct"] == 90.0  # 40 g/kWh at noon against 400 at midnight
    cheap, _ = _planner(tmp_path, "cost")
    costly = cheap.plan(options, 36_000, T0, T0 + 24 * H, {})
    assert {w["model"] for w in costly["windows"]} == {"m-cheap"} and float(costly["saving"]["cost_usd"]) > 0
    asap, _ = _planner(tmp_path, "asap")
    now = asap.plan(options, 36_000, T0, T0 + 24 * H, {})
    assert now["windows"][0]["start"] == T0.isoformat() and now["saving"]["co2e_g"] == 0


def test_plan_respects_the_deadline_and_capacity_used_by_others(tmp_path: Path) -> None:
    planner, services = _planner(tmp_path, "carbon")
    options = [services.targets["m-green"]]
    early = planner.plan(options, 36_000, T0, T0 + 6 * H, {})  # the clean hours are past the deadline
    assert early["windows"][0]["start"] == T0.isoformat()
    busy = {("g", (T0 + 12 * H).isoformat()): 36_000}
    moved = planner.plan(options, 36_000, T0, T0 + 24 * H, busy)
    assert [w["start"][11:16] for w in moved["windows"]] == ["13:00"]


def test_curve_files_are_checked(tmp_path: Path) -> None:
    import pytest

    from margin.errors import ConfigError

    with pytest.raises(ConfigError, match="lacks some of the 24 hours"):
        CurveSet.parse("zone,year,month,hour_utc,g_co2e_per_kwh,usd_per_kwh\nX,2026,1,0,10,\n", "t")
    with pytest.raises(ConfigError, match="header"):
        CurveSet.parse("a,b\n1,2\n", "t")
    bundled = CurveSet.bundled()
    assert {"DE-LU", "US-CAL-CISO", "GB"} <= bundled.zones()
    noon = bundled.at("DE-LU", datetime(2026, 7, 15, 11, 30, tzinfo=UTC))
    night = bundled.at("DE-LU", datetime(2026, 7, 15, 20, 0, tzinfo=UTC))
    assert noon is not None and night is not None and noon.g_per_kwh < night.g_per_kwh
    assert noon.source == "curve:DE-LU/2023-07T11" and noon.usd_per_kwh is not None


async def test_a_curve_file_is_re_read(tmp_path: Path) -> None:
    import asyncio

    from margin.config import GridConfig, RegionConfig
    from margin.economics.curves import keep_fresh

    path = tmp_path / "c.csv"
    path.write_text(CURVES)
    source = CurveSource(GridConfig(curves=str(path), refresh_s=0.01), {"r": RegionConfig(curve="GREEN")})
    first = source.at("GREEN", T0 + 13 * H)
    assert first is not None and first.g_per_kwh == 40
    path.write_text(CURVES.replace("GREEN,2026,7,13,40", "GREEN,2026,7,13,41"))
    task = asyncio.create_task(keep_fresh(source))
    for _ in polls():
        found = source.at("GREEN", T0 + 13 * H)
        if found is not None and found.g_per_kwh == 41:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert found is not None and found.g_per_kwh == 41
    path.write_text("garbage")  # a broken source keeps the curves in force
    await source.refresh()
    kept = source.at("GREEN", T0 + 13 * H)
    assert kept is not None and kept.g_per_kwh == 41


async def test_curves_from_an_http_source_with_a_size_limit() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from margin.config import GridConfig, RegionConfig
    from tests.helpers import live_server

    async def curves(_: object) -> PlainTextResponse:
        return PlainTextResponse(CURVES)

    regions = {"r": RegionConfig(curve="CHEAP")}
    async with live_server(Starlette(routes=[Route("/curves.csv", curves)])) as url:
        source = CurveSource(GridConfig(curves=f"{url}/curves.csv"), regions)
        assert source.at("CHEAP", T0) is None  # nothing until fetched (the gateway awaits it at start)
        await source.refresh()
        found = source.at("CHEAP", T0)
        assert found is not None and found.g_per_kwh == 500 and found.usd_per_kwh == Decimal("0.01")
        small = CurveSource(GridConfig(curves=f"{url}/curves.csv", max_bytes=100), regions)
        await small.refresh()  # over grid.max_bytes: refused (logged), nothing in force
        assert small.at("CHEAP", T0) is None


async def test_an_http_source_is_named_without_its_password(caplog: pytest.LogCaptureFixture) -> None:
    """A curve URL with a password (basic auth): a failed fetch is logged naming the URL with `***` for it,
    and without httpx's message, which quotes the URL whole."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from margin.config import GridConfig, RegionConfig
    from tests.helpers import live_server

    async def curves(_: object) -> PlainTextResponse:
        return PlainTextResponse(CURVES)

    regions = {"r": RegionConfig(curve="CHEAP")}
    logged: dict[str, str] = {}
    async with live_server(Starlette(routes=[Route("/curves.csv", curves)])) as url:
        shown = url.replace("http://", "http://grid:***@")
        for path, config in (("/gone.csv", {}), ("/curves.csv", {"max_bytes": 100})):
            caplog.clear()
            secret = url.replace("http://", "http://grid:s3cret@") + path
            source = CurveSource(GridConfig(curves=secret, **config), regions)
            await source.refresh()
            assert source.at("CHEAP", T0) is None
            (logged[path],) = [r.getMessage() for r in caplog.records if r.name == "margin.grid"]
    assert logged["/gone.csv"] == f"grid curves from {shown}/gone.csv not refreshed: HTTP 404"
    assert logged["/curves.csv"] == (
        f"grid curves from {shown}/curves.csv not refreshed: grid curves at {shown}/curves.csv are larger than "
        "grid.max_bytes (100)"
    )


async def test_a_jobs_jurisdictions_see_the_tags_its_key_fills_from_the_header(db_path: Path) -> None:
    """The schedule picks deployments within the jurisdictions the lines will be held to. A key with
    `customer=*` fills its customer from the job's `x-margin-tags`, and the request path applies that
    customer's policy to every line; the planner saw only the key's fixed tags, so it could plan a deployment
    the lines would then be refused on (403) where the same requests sent online were routed within EU."""
    policies = {"tags": {"customer=eu-bank": {"jurisdictions": ["EU"]}}}
    async with gateway(fake_settings(db_path, policies=policies)) as gw:
        runner = gw.app.state.batch_runner
        principal = Principal(key_id="k", name="k", team="t", tags={"customer": "*"})
        assert runner.jurisdictions(principal, {"customer": "eu-bank"}) == ["EU"]
        assert runner.jurisdictions(principal, {"customer": "other"}) is None
        fixed = Principal(key_id="k", name="k", team="t", tags={"customer": "other"})  # cannot be overridden
        assert runner.jurisdictions(fixed, {"customer": "eu-bank"}) is None
        unbound = Principal(key_id="k", name="k", team="t")  # a header tag the key does not bind: a label only
        assert runner.jurisdictions(unbound, {"customer": "eu-bank"}) is None
