"""Hourly grid curves: gCO2e/kWh and $/kWh per zone, as a typical day per month (UTC hours).

The bundled set (`data/grid_curves.csv`, built by `scripts/build_grid_curves.py`) averages 2023's hourly data
of 16 zones by month and UTC hour: lifecycle carbon intensity from Electricity Maps' zone data (ODbL) and
wholesale day-ahead prices from each market operator, both as collected in HPE's sustain-cluster (MIT).
Provenance per zone: `data/README.md`. A CSV file of the same columns or an http(s) URL serving one replaces
it (`grid.curves`); a region uses a zone with `curve: ZONE`.

Columns: zone, year, month (1-12), hour_utc (0-23), g_co2e_per_kwh, usd_per_kwh (may be empty).
"""

from __future__ import annotations

import asyncio
import csv
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path

import httpx

from margin.config import GridConfig, RegionConfig
from margin.errors import ConfigError
from margin.urls import hide_password

log = logging.getLogger("margin.grid")
COLUMNS = ("zone", "year", "month", "hour_utc", "g_co2e_per_kwh", "usd_per_kwh")


@dataclass(frozen=True, slots=True)
class HourValue:
    g_per_kwh: float
    usd_per_kwh: Decimal | None
    source: str  # curve:<zone>/<year>-<month>T<hour>: the typical day's hour that was used


class CurveSet:
    """Immutable: a refresh builds a new set and swaps it in."""

    def __init__(self, values: dict[tuple[str, int, int], tuple[float, Decimal | None]], years: dict[str, str]) -> None:
        self._values = values
        self._years = years

    @classmethod
    def parse(cls, text: str, origin: str) -> CurveSet:
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None or not set(COLUMNS) <= set(reader.fieldnames):
            raise ConfigError(f"grid curves {origin}: the header must name {', '.join(COLUMNS)}")
        values: dict[tuple[str, int, int], tuple[float, Decimal | None]] = {}
        years: dict[str, str] = {}
        for number, row in enumerate(reader, start=2):
            try:
                zone, month, hour = row["zone"].strip().upper(), int(row["month"]), int(row["hour_utc"])
                grams = float(row["g_co2e_per_kwh"])
                price = Decimal(row["usd_per_kwh"]) if (row["usd_per_kwh"] or "").strip() else None
            except (ValueError, InvalidOperation, AttributeError) as exc:
                raise ConfigError(f"grid curves {origin}, line {number}: {exc}") from exc
            if not zone or not 1 <= month <= 12 or not 0 <= hour <= 23 or not 0 <= grams < 10_000:
                raise ConfigError(f"grid curves {origin}, line {number}: zone, month 1-12, hour 0-23, 0 ≤ g < 10000")
            values[(zone, month, hour)] = (grams, price)
            years[zone] = (row["year"] or "undated").strip()
        for zone, month, _ in values:
            if any((zone, month, h) not in values for h in range(24)):
                raise ConfigError(f"grid curves {origin}: zone {zone} month {month} lacks some of the 24 hours")
        return cls(values, years)

    @classmethod
    def bundled(cls) -> CurveSet:
        text = resources.files("margin.economics").joinpath("data/grid_curves.csv").read_text("utf-8")
        return cls.parse(text, "builtin")

    def zones(self) -> set[str]:
        return set(self._years)

    def at(self, zone: str, when: datetime) -> HourValue | None:
        """The zone's value for the hour of `when` (UTC) on its month's typical day; None if it has none."""
        moment = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
        key = zone.upper()
        found = self._values.get((key, moment.month, moment.hour))
        if found is None:
            return None
        year = self._years[key]
        return HourValue(found[0], found[1], f"curve:{key}/{year}-{moment.month:02d}T{moment.hour:02d}")


class CurveSource:
    """The curves in force. The bundled set and files load on first use (so a gateway with no region on a
    curve never reads them); a URL loads on `refresh()`, which the gateway awaits at start."""

    def __init__(self, config: GridConfig, regions: Mapping[str, RegionConfig] | None = None) -> None:
        self.config = config
        self._regions = dict(regions or {})
        self._set: CurveSet | None = None
        self.remote = config.curves.startswith(("http://", "https://"))
        self.shown = hide_password(config.curves)  # what messages name: a URL's password is no one's business

    @property
    def used(self) -> bool:
        return any(region.curve for region in self._regions.values())

    def current(self) -> CurveSet | None:
        if self._set is None and not self.remote:
            self._set = self._load_local()
            self.check(self._set)
        return self._set

    def at(self, zone: str, when: datetime) -> HourValue | None:
        curves = self.current()
        return curves.at(zone, when) if curves is not None else None

    def check(self, curves: CurveSet) -> None:
        missing = sorted({r.curve.upper() for r in self._regions.values() if r.curve} - curves.zones())
        if missing:
            raise ConfigError(
                f"regions name curve zones {missing} that {self.shown} does not have "
                f"(it has {', '.join(sorted(curves.zones()))})"
            )

    def _load_local(self) -> CurveSet:
        if self.config.curves == "builtin":
            return CurveSet.bundled()
        path = Path(self.config.curves).expanduser()
        try:
            if path.stat().st_size > self.config.max_bytes:
                raise ConfigError(f"grid curves {path} are larger than grid.max_bytes ({self.config.max_bytes})")
            return CurveSet.parse(path.read_text(encoding="utf-8"), str(path))
        except OSError as exc:
            raise ConfigError(f"cannot read grid curves {path}: {exc.strerror}") from exc

    async def refresh(self) -> None:
        """Re-read a file or fetch the URL; a source that fails keeps the curves in force (logged)."""
        if not self.used or self.config.curves == "builtin":
            return
        try:
            fresh = await self._fetch() if self.remote else await asyncio.to_thread(self._load_local)
            self.check(fresh)
        except (ConfigError, httpx.HTTPError) as exc:
            if self._set is None and not self.remote:
                raise
            log.error("grid curves from %s not refreshed: %s", self.shown, _reason(exc))
            return
        self._set = fresh

    async def _fetch(self) -> CurveSet:
        limit, shown = self.config.max_bytes, self.shown
        async with (
            httpx.AsyncClient(timeout=self.config.fetch_timeout_s) as client,
            client.stream("GET", self.config.curves) as response,
        ):
            response.raise_for_status()
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise ConfigError(f"grid curves at {shown} are larger than grid.max_bytes ({limit})")
                chunks.append(chunk)
        try:
            return CurveSet.parse(b"".join(chunks).decode("utf-8"), shown)
        except UnicodeDecodeError as exc:
            raise ConfigError(f"grid curves at {shown} are not UTF-8 text") from exc


def _reason(exc: Exception) -> str:
    """Why a refresh failed, without the URL httpx puts in a status error (its password included)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return str(exc)


async def keep_fresh(source: CurveSource) -> None:
    """Re-read a file or URL source every `grid.refresh_s` (run as a task for the gateway's lifetime)."""
    interval = source.config.refresh_s
    if interval is None or source.config.curves == "builtin" or not source.used:
        return
    while True:
        await asyncio.sleep(interval)
        await source.refresh()
