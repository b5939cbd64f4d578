"""Carbon- and cost-aware choice among equivalent deployments (a `lowest-carbon` / `lowest-cost` route): one
pure function, so the route step calls it wherever it orders candidates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from margin.types import Target

Objective = Literal["carbon", "cost"]


@dataclass(frozen=True, slots=True)
class Preference:
    """A `lowest-carbon`/`lowest-cost` route's choice: what it minimised and the default deployment (the
    route's first allowed one), whose cost and carbon for the same tokens the ledger compares with."""

    objective: Objective
    default: Target


@dataclass(frozen=True, slots=True)
class Option:
    """One candidate as the choice sees it: gCO2e and $ per token at this hour (None when unknown)."""

    g_per_token: float | None
    usd_per_token: Decimal | None


def preferred_order(options: Sequence[Option], objective: Objective) -> list[int]:
    """Indices of `options`, best first: the lowest gCO2e (or $) per token. Candidates whose value is unknown
    come after every known one; ties, and the unknowns among themselves, keep the given (default) order."""

    def key(index: int) -> tuple[bool, float | Decimal, int]:
        option = options[index]
        value = option.g_per_token if objective == "carbon" else option.usd_per_token
        return (value is None, 0 if value is None else value, index)

    return sorted(range(len(options)), key=key)
