"""Self-hosted backends: provisioned vs busy time, utilization, and idle cost as its own line (DESIGN §4).

Assumptions, printed with the numbers:
- a backend with `hardware:` in the config is provisioned for the whole window; an open start begins at the
  backend's first ledger row in the window, an open end is now;
- busy time is the busy time billed to each request (`busy_ms`, the SharedClock share or the backend's own
  busy figure, so concurrent requests are not double counted). Rows written before that column existed fall
  back to `backend_ms` (wall time waiting on the backend), which over-counts under concurrency;
- idle cost = hourly TCO × (1 + energy and network overheads) × idle hours. Idle power is not priced.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from margin.config import Settings
from margin.economics.money import SECONDS_PER_HOUR, dec, usd_str
from margin.economics.tco import overhead_factor
from margin.report.metrics import as_utc, usd
from margin.report.queries import Window
from margin.report.source import source

ASSUMPTION = (
    "provisioned = the whole window (open start: the backend's first row; open end: now); "
    "busy = Σ busy_ms billed to requests (backend_ms for older rows); idle cost = hourly TCO × idle hours"
)


@dataclass(frozen=True, slots=True)
class BackendUtilization:
    backend: str
    usd_per_hour: Decimal  # all-in, overheads included
    requests: int
    provisioned_s: float
    busy_s: float
    approx_busy_rows: int  # rows whose busy time is backend_ms (wall time), not busy_ms
    request_cost_usd: Decimal  # Σ cost of the backend's requests
    idle_cost_usd: Decimal

    @property
    def utilization(self) -> float | None:
        return min(1.0, self.busy_s / self.provisioned_s) if self.provisioned_s > 0 else None

    @property
    def idle_s(self) -> float:
        return max(0.0, self.provisioned_s - self.busy_s)

    def to_json(self) -> dict[str, Any]:
        rate = self.utilization
        return {
            "backend": self.backend,
            "usd_per_hour": usd_str(self.usd_per_hour),
            "requests": self.requests,
            "provisioned_s": round(self.provisioned_s, 3),
            "busy_s": round(self.busy_s, 3),
            "idle_s": round(self.idle_s, 3),
            "utilization": None if rate is None else round(rate, 6),
            "approx_busy_rows": self.approx_busy_rows,
            "request_cost_usd": usd_str(self.request_cost_usd),
            "idle_cost_usd": usd_str(self.idle_cost_usd),
            "total_cost_usd": usd_str(self.request_cost_usd + self.idle_cost_usd),
            "assumption": ASSUMPTION,
        }


def _per_backend(connection: sa.Connection, window: Window, names: list[str]) -> dict[str, Any]:
    src = source(window, ("backend",))
    backend = src.dim("backend").label("backend")
    m = src.m
    query = (
        sa.select(backend, m("requests"), m("busy_ms"), m("approx_busy"), m("cost_nanousd"), src.first_at())
        .where(*src.where(), src.dim("backend").in_(names))
        .group_by(src.dim("backend"))
    )
    return {row[0]: row for row in connection.execute(query)}


def utilization(
    engine: sa.Engine, window: Window, settings: Settings, now: datetime | None = None
) -> list[BackendUtilization]:
    """One line per backend with `hardware:` (self-hosted), in config order."""
    hosted = {name: b.hardware for name, b in settings.backends.items() if b.hardware is not None}
    if not hosted:
        return []
    end = window.until or now or datetime.now().astimezone()
    with engine.connect() as connection:
        found = _per_backend(connection, window, list(hosted))
    out = []
    for name, hardware in hosted.items():
        row = found.get(name)
        start = window.since or (as_utc(row[5]) if row is not None else None)
        provisioned = max(0.0, (end - start).total_seconds()) if start is not None else 0.0
        busy_s = float(row[2] or 0) / 1000 if row is not None else 0.0
        hourly = hardware.usd_per_hour * overhead_factor(hardware.energy_overhead, hardware.network_overhead)
        idle_s = max(0.0, provisioned - busy_s)
        out.append(
            BackendUtilization(
                name,
                hourly,
                int(row[1]) if row is not None else 0,
                provisioned,
                busy_s,
                int(row[3] or 0) if row is not None else 0,
                usd(row[4]) if row is not None else Decimal(0),
                hourly * dec(idle_s) / SECONDS_PER_HOUR,
            )
        )
    return out
