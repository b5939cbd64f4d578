"""Self-hosted backends: provisioned vs busy time, utilization, and idle cost as its own line (DESIGN §4).

Assumptions, printed with the numbers:
- a backend with `hardware:` in the config is provisioned for the whole window; an open start begins at the
  backend's first ledger row in the window, an open end is now, and so is an end after now (this month,
  asked on its 7th: its later hours were counted as idle cost that had not been spent);
- busy time is the busy time billed to each request (`busy_ms`, the SharedClock share or the backend's own
  busy figure, so concurrent requests are not double counted). Rows written before that column existed fall
  back to `backend_ms` (wall time waiting on the backend), which over-counts under concurrency;
- idle cost = hourly TCO × (1 + energy and network overheads) × idle hours. Idle power is not priced.
- a team's view (Window.team), or a key's or an org's (`Window.partial`): busy time, requests and cost are its own,
  utilization is its share of the provisioned time; idle time is shared by every team and is not attributed
  (idle cost: null; a key without a team was shown the whole backend's idle cost as its own).
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
from margin.ledger import read
from margin.ledger.read import Window
from margin.report.metrics import usd

ASSUMPTION = (
    "provisioned = the whole window (open start: the backend's first row; an open end or one after now: now); "
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
    idle_cost_usd: Decimal | None  # None in a team's or key's view: idle time is shared

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
            "total_cost_usd": usd_str(self.request_cost_usd + (self.idle_cost_usd or Decimal(0))),
            "assumption": ASSUMPTION,
        }


def utilization(
    engine: sa.Engine, window: Window, settings: Settings, now: datetime | None = None
) -> list[BackendUtilization]:
    """One line per backend with `hardware:` (self-hosted), in config order."""
    hosted = {name: b.hardware for name, b in settings.backends.items() if b.hardware is not None}
    if not hosted:
        return []
    now = now or datetime.now().astimezone()
    end = min(window.until, now) if window.until is not None else now  # no idle time after now: not yet spent
    with engine.connect() as connection:
        found = read.grouped(connection, window, "backend")
        first = read.first_at(connection, window, "backend") if window.since is None else {}
    out = []
    for name, hardware in hosted.items():
        sums = found.get(name) or read.zero()
        start = window.since or first.get(name)
        provisioned = max(0.0, (end - start).total_seconds()) if start is not None else 0.0
        busy_s = sums["busy_us"] / 1_000_000
        hourly = hardware.usd_per_hour * overhead_factor(hardware.energy_overhead, hardware.network_overhead)
        idle_s = max(0.0, provisioned - busy_s)
        idle = None if window.partial else hourly * dec(idle_s) / SECONDS_PER_HOUR
        out.append(
            BackendUtilization(
                name,
                hourly,
                sums["requests"],
                provisioned,
                busy_s,
                sums["approx_busy"],
                usd(sums["cost_nanousd"]),
                idle,
            )
        )
    return out
