"""Formulas of DESIGN §4 on hand-checked numbers."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from margin.config import RegionConfig, Settings, parse_settings
from margin.economics.carbon import WORLD_AVERAGE_G_PER_KWH, GridTable, co2e_grams
from margin.economics.energy import RaplMeter, modelled
from margin.economics.meter import Meter, SharedClock
from margin.economics.money import from_nanousd, to_nanousd, usd_str
from margin.economics.prices import PriceBook
from margin.economics.tco import TcoInputs, busy_cost, calculate
from margin.errors import ConfigError
from margin.types import Usage


def test_seed_001_worked_example() -> None:
    result = calculate(TcoInputs(Decimal(10), Decimal(33), Decimal("0.20"), Decimal("0.10")))
    assert usd_str(result.usd_per_token_base, 6) == "0.000084"
    assert result.usd_per_token_base == Decimal(10) / 3600 / 33
    assert usd_str(result.usd_per_1k_tokens, 3) == "0.109"
    assert result.usd_per_1k_tokens == pytest.approx(Decimal("0.10942760942"), abs=Decimal("1e-10"))


def test_energy_and_carbon_per_token() -> None:
    # 700 W at 100 tok/s: 7 J/token; PUE 1.1 → 7.7 J; 1K tokens = 7700 J = 2.1389e-3 kWh; × 56 g/kWh
    result = calculate(
        TcoInputs(Decimal("2.5"), Decimal(100), watts=700, pue=1.1, usd_per_kwh=Decimal("0.10"), grid_g_per_kwh=56)
    )
    assert result.energy_j_per_token == pytest.approx(7.7)
    assert result.co2e_g_per_1k_tokens == pytest.approx(7700 / 3.6e6 * 56)
    assert result.energy_usd_per_1k_tokens == pytest.approx(Decimal(7700) / Decimal("3.6e6") * Decimal("0.10"))


def test_busy_cost_is_decimal_and_adds_metered_energy() -> None:
    cost = busy_cost(
        Decimal("3.60"), 2.0, network_overhead=Decimal("0.5"), facility_energy_j=3.6e6, usd_per_kwh=Decimal("0.20")
    )
    assert isinstance(cost, Decimal)
    assert cost == Decimal("0.002") * Decimal("1.5") + Decimal("0.20")


def test_nanousd_round_trip_is_exact() -> None:
    assert to_nanousd(Decimal("0.000000001")) == 1
    assert to_nanousd(Decimal("1.2345678905")) == 1234567890  # half-even
    assert from_nanousd(1234567891) == Decimal("1.234567891")
    assert usd_str(None) is None


def test_grid_table_lookups() -> None:
    grid = GridTable.bundled()
    assert len(grid) > 200
    fra = grid.intensity(RegionConfig(grid_zone="FRA"))
    assert 20 < fra.g_per_kwh < 100 and fra.source.startswith("table:FRA/20")
    assert grid.intensity(RegionConfig(grid_zone="gcp:europe-north1")).g_per_kwh == 46
    assert grid.intensity(RegionConfig(grid_g_per_kwh=12.5)).source == "config"
    assert grid.intensity(RegionConfig()).g_per_kwh == WORLD_AVERAGE_G_PER_KWH
    assert co2e_grams(3.6e6, 475) == pytest.approx(475)


def test_genai_prices_lookup_and_unknown() -> None:
    settings = parse_settings(
        {
            "backends": {"oa": {"kind": "openai", "base_url": "https://api.openai.com/v1"}},
            "models": {"gpt-4o-mini": {"backend": "oa"}, "zzz-unknown": {"backend": "oa"}},
        }
    )
    book = PriceBook()
    price = book.list_price("gpt-4o-mini", settings.models["gpt-4o-mini"], settings.backends["oa"])
    assert price is not None and price.version.startswith("genai-prices@")
    # 1M input tokens of which 200K cached ($0.075/M), 100K output ($0.60/M)
    assert price.cost(1_000_000, 100_000, 200_000) == Decimal("0.12") + Decimal("0.015") + Decimal("0.06")
    assert book.list_price("zzz-unknown", settings.models["zzz-unknown"], settings.backends["oa"]) is None


def test_meter_tco_and_list_paths() -> None:
    settings = parse_settings(
        {
            "regions": {"r": {"grid_g_per_kwh": 100, "pue": 1.5, "usd_per_kwh": "0.30"}},
            "backends": {
                "gpu": {"kind": "fake", "region": "r", "hardware": {"usd_per_hour": "36", "watts_busy": 1000}},
                "api": {"kind": "fake"},
            },
            "models": {"self": {"backend": "gpu"}, "listed": {"backend": "api", "price": {"input": 1, "output": 3}}},
        }
    )
    meter = Meter(settings, GridTable.bundled(), PriceBook())
    charge = meter.charge("self", settings.models["self"], Usage(10, 10), busy_s=0.5)
    # 0.5 s × $36/h = $0.005; energy 1000 W × 0.5 s × PUE 1.5 = 750 J → × $0.30/kWh = $0.0000625
    assert charge.cost_usd is not None
    assert to_nanousd(charge.cost_usd) == 5_062_500  # energy enters as a measured float: exact to the nano-$
    assert charge.energy_j == pytest.approx(750) and charge.co2e_g == pytest.approx(750 / 3.6e6 * 100)
    listed = meter.charge("listed", settings.models["listed"], Usage(1000, 1000), busy_s=9)
    assert listed.cost_usd == Decimal("0.004") and listed.energy_j is None and listed.cost_method == "list"


def test_shared_clock_splits_overlapping_busy_time(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr("margin.economics.meter.time.perf_counter", lambda: now[0])
    clock = SharedClock()
    a = clock.enter()  # t=0: A alone
    now[0] = 1.0
    b = clock.enter()  # t=1: A and B share
    now[0] = 3.0
    share_a = clock.leave(a)  # A: 1 + 2/2 = 2 s
    now[0] = 4.0
    share_b = clock.leave(b)  # B: 2/2 + 1 = 2 s
    now[0] = 10.0  # idle time is nobody's
    c = clock.enter()
    now[0] = 11.0
    assert (share_a, share_b, clock.leave(c)) == (2.0, 2.0, 1.0)


def test_rapl_reader_sums_packages_and_handles_wraparound(tmp_path: Path) -> None:
    for name, energy in (("intel-rapl:0", "1000"), ("intel-rapl:1", "500"), ("intel-rapl:0:0", "7")):
        zone = tmp_path / name
        zone.mkdir()
        (zone / "energy_uj").write_text(energy)
        (zone / "max_energy_range_uj").write_text("10000")
    meter = RaplMeter(tmp_path)
    assert meter.available and meter.read_uj() == [1000, 500]
    assert meter.delta_j([1000, 500], [3000, 400]) == pytest.approx((2000 + 9900) / 1e6)
    assert not RaplMeter(tmp_path / "absent").available
    assert modelled(None, 1.0) is None and modelled(20, 0.5).it_j == 10  # type: ignore[union-attr]


def test_rapl_measures_only_backends_on_this_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "energy_uj").write_text("1000000")
    (zone / "max_energy_range_uj").write_text("10000000000")
    settings = parse_settings(
        {
            "backends": {
                "local": {"kind": "llamacpp", "hardware": {"usd_per_hour": 1, "watts_busy": 10}},
                "remote": {
                    "kind": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    "hardware": {"usd_per_hour": 1, "watts_busy": 10},
                },
            },
            "models": {"m": {"backend": "local"}, "r": {"backend": "remote"}},
        }
    )
    meter = Meter(settings, GridTable.bundled(), PriceBook(), rapl=RaplMeter(tmp_path))
    assert meter.probe("remote") is None
    now = [100.0]
    monkeypatch.setattr("margin.economics.energy.time.perf_counter", lambda: now[0])
    probe = meter.probe("local")
    assert probe is not None
    (zone / "energy_uj").write_text("5000000")  # 4 J over the call
    now[0] = 102.0  # 2 s of wall time, of which 1 s busy for this request → half the energy
    measured = meter.measured_j(probe, busy_s=1.0)
    assert measured == pytest.approx(2.0)
    charge = meter.charge("m", settings.models["m"], Usage(1, 1), busy_s=1.0, measured_j=measured)
    assert charge.energy_method == "measured" and charge.energy_j == pytest.approx(2.0)


def _cache_write_settings() -> Settings:
    price = {"input": "3", "output": "15", "cached_input": "0.3", "cache_write_input": "3.75"}
    return parse_settings(
        {
            "backends": {"claude": {"kind": "anthropic", "base_url": "http://127.0.0.1:9/v1"}},
            "models": {
                "written": {"backend": "claude", "price": price},
                "unwritten": {"backend": "claude", "price": {"input": "3", "output": "15", "cached_input": "0.3"}},
            },
        }
    )


def test_a_configured_cache_write_rate_prices_cache_writes() -> None:
    settings = _cache_write_settings()
    meter = Meter(settings, GridTable.bundled(), PriceBook())
    # 4021 prompt tokens: 3000 cache reads, 1000 cache writes, 21 fresh; 9 output
    usage = Usage(4021, 9, 3000, cache_write_tokens=1000)
    charge = meter.charge("written", settings.models["written"], usage, busy_s=1)
    expected = (21 * Decimal(3) + 3000 * Decimal("0.3") + 1000 * Decimal("3.75") + 9 * Decimal(15)) / 10**6
    assert charge.cost_usd == expected and to_nanousd(expected) == 4_848_000
    # without the key, writes are priced at the input rate, as before
    plain = meter.charge("unwritten", settings.models["unwritten"], usage, busy_s=1)
    assert plain.cost_usd == (1021 * Decimal(3) + 3000 * Decimal("0.3") + 9 * Decimal(15)) / 10**6


def test_admission_prices_a_prompt_at_the_configured_cache_write_rate() -> None:
    settings = _cache_write_settings()
    meter = Meter(settings, GridTable.bundled(), PriceBook())
    # the worst case of 2000 prompt tokens on an anthropic backend: all of them written to the cache
    worst = meter.cost_usd("written", settings.models["written"], Usage(2000, 100), busy_s=0)
    assert worst == (2000 * Decimal("3.75") + 100 * Decimal(15)) / 10**6
    plain = meter.cost_usd("unwritten", settings.models["unwritten"], Usage(2000, 100), busy_s=0)
    assert plain == (2000 * Decimal(3) + 100 * Decimal(15)) / 10**6


def test_a_cache_write_rate_is_not_negative() -> None:
    with pytest.raises(ConfigError, match="cache_write_input"):
        parse_settings(
            {
                "backends": {"api": {"kind": "fake"}},
                "models": {"m": {"backend": "api", "price": {"input": 1, "output": 1, "cache_write_input": -1}}},
            }
        )
