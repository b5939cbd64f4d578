"""Grid carbon intensity (location-based) from a bundled, dated table.

Source: `data/grid_intensity.csv`, extracted from CodeCarbon 3.3.2 (MIT): country rows from its
`global_energy_mix.json` (Our World in Data / Ember, mostly 2022-2023, the year is on each row) and Google
Cloud region rows from its `cloud/impact.csv` (Google's published region data). A config region can
override the value (`grid_g_per_kwh`) or choose a row (`grid_zone`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources

from margin.config import RegionConfig

WORLD_AVERAGE_G_PER_KWH = 475.0  # IEA/Ember world average ~2022, DESIGN §4


@dataclass(frozen=True, slots=True)
class GridIntensity:
    g_per_kwh: float
    source: str  # "config", "table:<key>/<year>" or "world-average"


@dataclass(frozen=True, slots=True)
class GridRow:
    key: str
    name: str
    g_per_kwh: float
    year: str
    source: str


class GridTable:
    def __init__(self, rows: dict[str, GridRow]) -> None:
        self._rows = rows

    @classmethod
    def bundled(cls) -> GridTable:
        text = resources.files("margin.economics").joinpath("data/grid_intensity.csv").read_text("utf-8")
        rows = {
            r["key"].upper(): GridRow(r["key"], r["name"], float(r["g_co2e_per_kwh"]), r["year"], r["source"])
            for r in csv.DictReader(text.splitlines())
        }
        return cls(rows)

    def get(self, key: str) -> GridRow | None:
        return self._rows.get(key.upper())

    def __len__(self) -> int:
        return len(self._rows)

    def intensity(self, region: RegionConfig) -> GridIntensity:
        if region.grid_g_per_kwh is not None:
            return GridIntensity(region.grid_g_per_kwh, "config")
        if region.grid_zone:
            row = self.get(region.grid_zone)
            if row is not None:
                return GridIntensity(row.g_per_kwh, f"table:{row.key}/{row.year or 'undated'}")
        return GridIntensity(WORLD_AVERAGE_G_PER_KWH, "world-average")


def co2e_grams(energy_j: float, g_per_kwh: float) -> float:
    return energy_j / 3_600_000.0 * g_per_kwh
