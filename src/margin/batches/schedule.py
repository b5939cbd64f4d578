"""A job's schedule: which deployment runs how many of its tokens in which hour before the deadline, so
that the total gCO2e (or $) is lowest, within each deployment's capacity. Pure: curves, capacities and
the work come in, windows go out.

The cost of a job is linear in the tokens placed in each (deployment, hour) slot, each slot holds at most
its capacity, and any token may go to any slot: a fractional knapsack, which taking the cheapest slots
first solves exactly. Ties go to the earlier hour, then to the deployment listed first (the default), so
flat curves run the job at once where it would have run anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

Objective = Literal["carbon", "cost"]


@dataclass(frozen=True, slots=True)
class Slot:
    option: str  # the deployment (a public model name)
    rank: int  # the deployment's place in the default order (0 = the default)
    start: datetime
    end: datetime
    capacity: int | None  # tokens this slot can still take; None = no limit known
    g_per_token: float | None
    usd_per_token: Decimal | None

    def unit(self, objective: Objective) -> float | Decimal | None:
        return self.g_per_token if objective == "carbon" else self.usd_per_token


@dataclass(frozen=True, slots=True)
class Window:
    option: str
    start: datetime
    end: datetime
    tokens: int
    co2e_g: float | None
    cost_usd: Decimal | None


@dataclass(frozen=True, slots=True)
class Schedule:
    windows: list[Window]
    unplaced: int  # tokens no slot before the deadline could take

    @property
    def co2e_g(self) -> float | None:
        values = [w.co2e_g for w in self.windows]
        return None if any(v is None for v in values) else sum(v or 0.0 for v in values)

    @property
    def cost_usd(self) -> Decimal | None:
        values = [w.cost_usd for w in self.windows]
        return None if any(v is None for v in values) else sum((v or Decimal(0) for v in values), Decimal(0))


def _fill(slots: Sequence[Slot], work: int) -> tuple[list[tuple[Slot, int]], int]:
    taken: list[tuple[Slot, int]] = []
    left = work
    for slot in slots:
        if left <= 0:
            break
        take = left if slot.capacity is None else min(left, slot.capacity)
        if take > 0:
            taken.append((slot, take))
            left -= take
    return taken, left


def _windows(taken: list[tuple[Slot, int]]) -> list[Window]:
    """Consecutive hours of one deployment become one window; windows in time order."""
    out: list[Window] = []
    for slot, tokens in sorted(taken, key=lambda item: (item[0].start, item[0].rank)):
        g = None if slot.g_per_token is None else slot.g_per_token * tokens
        usd = None if slot.usd_per_token is None else slot.usd_per_token * tokens
        last = out[-1] if out else None
        if last is not None and last.option == slot.option and last.end == slot.start:
            merged_g = None if last.co2e_g is None or g is None else last.co2e_g + g
            merged_usd = None if last.cost_usd is None or usd is None else last.cost_usd + usd
            out[-1] = Window(last.option, last.start, slot.end, last.tokens + tokens, merged_g, merged_usd)
        else:
            out.append(Window(slot.option, slot.start, slot.end, tokens, g, usd))
    return out


def schedule(slots: Sequence[Slot], work: int, objective: Objective) -> Schedule:
    """The cheapest placement of `work` tokens. Slots whose value for the objective is unknown are used only
    after every known one (and then in time order)."""

    def key(slot: Slot) -> tuple[bool, float | Decimal, datetime, int]:
        value = slot.unit(objective)
        return (value is None, 0 if value is None else value, slot.start, slot.rank)

    taken, left = _fill(sorted(slots, key=key), work)
    return Schedule(_windows(taken), left)


def run_now(slots: Sequence[Slot], work: int) -> Schedule:
    """The baseline: the default deployment from now on, hour after hour, until the work is done."""
    default = sorted((s for s in slots if s.rank == 0), key=lambda s: s.start)
    taken, left = _fill(default, work)
    return Schedule(_windows(taken), left)
