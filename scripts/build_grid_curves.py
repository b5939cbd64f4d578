"""Build margin's bundled grid curves (`src/margin/economics/data/grid_curves.csv`): a typical day per zone and month.

Input: a checkout of HewlettPackard/sustain-cluster (MIT; commit 293fbd1 was used) whose
`data/carbon_intensity/<ZONE>/<YEAR>/<ZONE>_<YEAR>_hourly.csv` files are Electricity Maps' hourly zone data
(lifecycle "LCA" carbon intensity, gCO2eq/kWh; Electricity Maps data is ODbL) and whose
`data/electricity_prices/standardized/<ZONE>/<YEAR>/...csv` files are hourly wholesale day-ahead prices in
USD/MWh (UTC) from each market operator (ENTSO-E, CAISO, PJM, ERCOT, NYISO, IESO, AEMO, JEPX, KPX, EMC...).

Output: one row per zone × month × UTC hour with the mean intensity and the mean price of that hour over
the month's days (price empty where the source has none).

    python scripts/build_grid_curves.py /path/to/sustain-cluster 2023 src/margin/economics/data/grid_curves.csv
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path

INTENSITY = "Carbon Intensity gCO\u2082eq/kWh (LCA)"


def _means(path: Path, time_column: str, value_column: str, scale: float) -> dict[tuple[int, int], float]:
    sums: dict[tuple[int, int], list[float]] = defaultdict(list)
    with path.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            value = row.get(value_column, "")
            if not value:
                continue
            stamp = row[time_column]  # "2023-01-01 00:00:00" or "2023-01-01 00:00:00+00:00" (UTC)
            sums[(int(stamp[5:7]), int(stamp[11:13]))].append(float(value) * scale)
    return {key: sum(values) / len(values) for key, values in sums.items()}


def main(source: Path, year: str, out: Path) -> None:
    rows = []
    for zone_dir in sorted((source / "data/carbon_intensity").iterdir()):
        intensity_file = zone_dir / year / f"{zone_dir.name}_{year}_hourly.csv"
        if not intensity_file.is_file():
            continue
        zone = zone_dir.name
        intensity = _means(intensity_file, "Datetime (UTC)", INTENSITY, 1.0)
        price_file = source / f"data/electricity_prices/standardized/{zone}/{year}/{zone}_electricity_prices_{year}.csv"
        price = _means(price_file, "Datetime (UTC)", "Price (USD/MWh)", 0.001) if price_file.is_file() else {}
        for (month, hour), grams in sorted(intensity.items()):
            usd = price.get((month, hour))
            rows.append([zone, year, month, hour, f"{grams:.1f}", "" if usd is None else f"{usd:.5f}"])
    with out.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["zone", "year", "month", "hour_utc", "g_co2e_per_kwh", "usd_per_kwh"])
        writer.writerows(rows)
    print(f"{len(rows)} rows, {len({r[0] for r in rows})} zones -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
