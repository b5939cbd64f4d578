"""Energy and utilization during a bench run, measured on this host when a meter exists.

Meters: NVML (`nvmlDeviceGetTotalEnergyConsumption`, summed over GPUs; `nvidia-ml-py`), then RAPL package
counters (margin.economics.energy.RaplMeter). Both see this machine only, so they are used only when the
endpoint is on loopback. Otherwise (or with none readable) energy is modelled from a given power and
labelled `estimated`. Host CPU utilization comes from /proc/stat; GPU utilization is sampled from NVML."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from margin.economics.energy import RaplMeter

MeterChoice = Literal["auto", "nvml", "rapl", "model", "none"]
GPU_SAMPLE_S = 0.25


@dataclass(slots=True)
class EnergyReading:
    it_j: float | None
    method: str  # measured:nvml | measured:rapl | estimated | none
    detail: str


class _Nvml:
    def __init__(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nv: Any = pynvml
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        if not self.handles:
            raise RuntimeError("no GPU")

    def names(self) -> list[str]:
        return [str(self.nv.nvmlDeviceGetName(h)) for h in self.handles]

    def energy_mj(self) -> int:
        return sum(int(self.nv.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self.handles)

    def util_pct(self) -> float:
        rates = [self.nv.nvmlDeviceGetUtilizationRates(h).gpu for h in self.handles]
        return float(sum(rates)) / len(rates)


def nvml() -> _Nvml | None:
    try:
        return _Nvml()
    except Exception:  # no library, no driver or no GPU: NVML is simply absent
        return None


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


@dataclass(slots=True)
class RunMeter:
    """Start before the load, stop after it: energy by the chosen meter plus utilization samples."""

    choice: MeterChoice
    local: bool
    _nvml: _Nvml | None = None
    _rapl: RaplMeter | None = None
    _start: Any = None
    _cpu0: tuple[int, int] | None = None
    _gpu_util: list[float] = field(default_factory=list)
    _sampler: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        if self.choice in ("auto", "nvml") and self.local:
            self._nvml = nvml()
        if self.choice in ("auto", "rapl") and self.local and self._nvml is None:
            rapl = RaplMeter()
            self._rapl = rapl if rapl.available else None

    async def _sample(self) -> None:
        assert self._nvml is not None
        while True:
            self._gpu_util.append(self._nvml.util_pct())
            await asyncio.sleep(GPU_SAMPLE_S)

    def start(self) -> None:
        self._cpu0 = _cpu_times()
        if self._nvml is not None:
            self._start = self._nvml.energy_mj()
            self._sampler = asyncio.create_task(self._sample())
        elif self._rapl is not None:
            self._start = self._rapl.read_uj()

    async def stop(self) -> tuple[float | None, dict[str, Any]]:
        """(measured IT joules or None, utilization block)."""
        joules = None
        if self._nvml is not None:
            joules = (self._nvml.energy_mj() - int(self._start)) / 1000.0
        elif self._rapl is not None:
            joules = self._rapl.delta_j(self._start, self._rapl.read_uj())
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        util: dict[str, Any] = {"host_cpu_pct": None, "gpu_pct_mean": None}
        cpu1 = _cpu_times()
        if self.local and self._cpu0 is not None and cpu1 is not None and cpu1[1] > self._cpu0[1]:
            util["host_cpu_pct"] = round(100 * (cpu1[0] - self._cpu0[0]) / (cpu1[1] - self._cpu0[1]), 2)
        if self._gpu_util:
            util["gpu_pct_mean"] = round(sum(self._gpu_util) / len(self._gpu_util), 2)
        return joules, util

    @property
    def method(self) -> str | None:
        if self._nvml is not None:
            return "measured:nvml"
        return "measured:rapl" if self._rapl is not None else None


def reading(
    measured_j: float | None,
    method: str | None,
    *,
    choice: MeterChoice,
    busy_s: float,
    duration_s: float,
    power_w: float | None,
    idle_w: float | None,
) -> EnergyReading:
    """Measured energy when there is some, else power_w × busy seconds (+ idle_w × idle seconds)."""
    if measured_j is not None and method is not None:
        return EnergyReading(measured_j, method, "host meter over the run's wall time (idle time included)")
    if choice == "none" or power_w is None:
        return EnergyReading(None, "none", "no meter readable and no --power-w given")
    idle_s = max(0.0, duration_s - busy_s)
    joules = power_w * busy_s + (idle_w or 0.0) * idle_s
    detail = f"{power_w:g} W × {busy_s:.3f} s busy" + (f" + {idle_w:g} W × {idle_s:.3f} s idle" if idle_w else "")
    return EnergyReading(joules, "estimated", detail)
