"""$/1K tokens, J/token and gCO2e/1K tokens of a run, by hand (DESIGN §4), and the energy fallbacks."""

from __future__ import annotations

import asyncio
import sys
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from margin.bench.economics import EconSpec, compute, spec_from_config
from margin.bench.energy import EnergyReading, RunMeter, reading
from margin.config import RegionConfig
from margin.errors import ConfigError, InvalidRequest
from tests.helpers import fake_settings

METRICS = {"input_tokens": 600, "output_tokens": 400, "duration_s": 10.0}


def test_tco_energy_and_carbon_by_hand() -> None:
    spec = EconSpec(
        usd_per_hour=Decimal("3.60"),
        power_w=100.0,
        region=RegionConfig(grid_zone="FRA", pue=1.2, usd_per_kwh=Decimal("0.20")),
        region_label="FRA",
    )
    energy = reading(None, None, choice="auto", busy_s=10.0, duration_s=10.0, power_w=100.0, idle_w=None)
    assert (energy.it_j, energy.method) == (1000.0, "estimated")
    block = compute(spec, METRICS, energy, [(600, 400)])
    # $3.60/h = $0.001/s over 100 tok/s = $0.00001/token = $0.01 per 1K; plus energy: 1,200 J facility per
    # 1,000 tokens = 1/3000 kWh × $0.20 = $0.0000667 per 1K
    assert Decimal(block["tco_usd_per_1k_tokens"]) == pytest.approx(Decimal("0.010066667"), abs=Decimal("1e-9"))
    assert Decimal(block["tco_usd_per_1k_output_tokens"]) == pytest.approx(
        Decimal("0.010066667") * 1000 / 400, abs=Decimal("1e-8")
    )
    assert block["facility_energy_j"] == pytest.approx(1200.0)
    assert block["j_per_token"] == pytest.approx(1.2)
    assert block["j_per_output_token"] == pytest.approx(3.0)
    assert block["grid_g_per_kwh"] == 56.0 and block["grid_source"].startswith("table:FRA")
    assert block["co2e_g_per_1k_tokens"] == pytest.approx(1200.0 / 3.6e6 * 56.0, rel=1e-5)  # 0.018667 g
    assert isinstance(block["tco_usd_per_1k_tokens"], str)  # money never leaves as a float


def test_list_price_from_genai_prices_and_no_energy_without_power() -> None:
    spec = EconSpec(price_model="gpt-4o-mini")
    energy = reading(None, None, choice="auto", busy_s=10.0, duration_s=10.0, power_w=None, idle_w=None)
    assert energy.it_j is None and energy.method == "none"
    block = compute(spec, METRICS, energy, [(300, 200), (300, 200)])
    # gpt-4o-mini: $0.15/M input, $0.60/M output → 600 × 0.15e-6 + 400 × 0.60e-6 = $0.00033 for 1,000 tokens
    assert Decimal(block["list_usd_per_1k_tokens"]) == Decimal("0.000330000")
    assert block["list_price_version"].startswith("genai-prices@")
    assert block["tco_usd_per_1k_tokens"] is None
    assert block["j_per_token"] is None and block["co2e_g_per_1k_tokens"] is None
    unknown = compute(EconSpec(price_model="no-such-model-xyz"), METRICS, energy, [(1, 1)])
    assert unknown["list_usd_per_1k_tokens"] is None and "no list price" in unknown["list_price_note"]


def test_idle_power_and_measured_energy_take_precedence() -> None:
    estimate = reading(None, None, choice="auto", busy_s=4.0, duration_s=10.0, power_w=50.0, idle_w=10.0)
    assert estimate.it_j == pytest.approx(50 * 4 + 10 * 6)
    measured = reading(123.0, "measured:rapl", choice="auto", busy_s=4.0, duration_s=10.0, power_w=50.0, idle_w=None)
    assert (measured.it_j, measured.method) == (123.0, "measured:rapl")
    assert reading(None, None, choice="none", busy_s=1, duration_s=1, power_w=5, idle_w=None).it_j is None


async def test_run_meter_remote_endpoint_measures_nothing() -> None:
    meter = RunMeter("auto", local=False)
    meter.start()
    joules, util = await meter.stop()
    assert joules is None and meter.method is None and util["host_cpu_pct"] is None


def test_spec_from_config_and_unknown_region(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path / "l.db")
    spec = spec_from_config(settings, "fake")
    assert spec.usd_per_hour == Decimal("3.60") and spec.power_w == 100
    assert spec.region.pue == 1.2 and spec.region.grid_zone == "FRA" and spec.region_label == "eu"
    with pytest.raises(ConfigError):
        spec_from_config(settings, "nope")
    bad = EconSpec(usd_per_hour=Decimal(1), region=RegionConfig(grid_zone="XXX"))
    with pytest.raises(InvalidRequest):
        compute(bad, METRICS, EnergyReading(None, "none", ""), [])


class FakeNvml:
    """Stands in for the `pynvml` module on a machine without a GPU: 2 GPUs, energy counters in mJ."""

    def __init__(self) -> None:
        self.energy_mj = [1_000_000, 5_000_000]

    def nvmlInit(self) -> None:
        return None

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        self.energy_mj[handle] += 250_000  # each read: 250 J more on this GPU
        return self.energy_mj[handle]

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=40 + 20 * handle)


async def test_nvml_energy_is_summed_over_gpus_for_a_local_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    meter = RunMeter("auto", local=True)
    assert meter.method == "measured:nvml"
    meter.start()
    await asyncio.sleep(0.01)
    joules, util = await meter.stop()
    assert joules == pytest.approx(500.0)  # one more read per GPU: 2 × 250 J
    assert util["gpu_pct_mean"] == pytest.approx(50.0)
    assert RunMeter("auto", local=False).method is None  # a remote endpoint: this host's GPUs say nothing
    assert RunMeter("model", local=True).method is None
