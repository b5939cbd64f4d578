"""Energy per request: measured from RAPL (`/sys/class/powercap`) when readable, else modelled as
watts_busy × busy seconds. Facility energy = IT energy × PUE. Hosted APIs without hardware figures get no
energy figure (NULL), never a made-up one."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class EnergyReading:
    it_j: float
    method: str  # measured | modelled


@dataclass(frozen=True, slots=True)
class Probe:
    started: float
    counters: list[int]


class RaplMeter:
    """Sums the package-level RAPL counters (intel-rapl:N, not their sub-zones), handling wrap-around."""

    def __init__(self, root: Path = Path("/sys/class/powercap")) -> None:
        self._zones: list[tuple[Path, int]] = []
        if root.is_dir():
            for zone in sorted(root.glob("intel-rapl:*")):
                if zone.name.count(":") != 1:
                    continue
                energy, limit = zone / "energy_uj", zone / "max_energy_range_uj"
                try:
                    int(energy.read_text())
                    self._zones.append((energy, int(limit.read_text()) if limit.exists() else 0))
                except (OSError, ValueError):
                    continue

    @property
    def available(self) -> bool:
        return bool(self._zones)

    def read_uj(self) -> list[int]:
        return [int(path.read_text()) for path, _ in self._zones]

    def probe(self) -> Probe | None:
        return Probe(time.perf_counter(), self.read_uj()) if self._zones else None

    def measure(self, probe: Probe, busy_s: float) -> float:
        """Package energy over the call, scaled by the share of the call the backend was busy for it
        (the counters see the whole machine, including work done for other requests meanwhile)."""
        wall = time.perf_counter() - probe.started
        share = min(1.0, busy_s / wall) if wall > 0 else 1.0
        return self.delta_j(probe.counters, self.read_uj()) * share

    def delta_j(self, before: list[int], after: list[int]) -> float:
        total = 0
        for (_, wrap), a, b in zip(self._zones, before, after, strict=True):
            total += b - a if b >= a else b + wrap - a
        return total / 1e6


def modelled(watts_busy: float | None, busy_s: float) -> EnergyReading | None:
    if watts_busy is None:
        return None
    return EnergyReading(watts_busy * busy_s, "modelled")
