"""The summary view (`margin report`, `/admin/usage`, `/v1/margin/usage`): figures per group and in total,
rendered from margin.ledger.read. Money is exact (integer nano-USD sums, decimal strings); energy and carbon
are integer microjoules and nanograms, shown as J and g.

Latency percentiles are nearest rank. The totals' are exact; each group's comes from the latency histogram,
within 4.43 % of the exact value (margin.ledger.read.latency) — the JSON says so under `percentiles`.

Groups are ranked by cost, then requests, then key. Over HTTP at most `limit` of them are listed (default
GROUP_LIMIT, at most MAX_GROUP_LIMIT): a grouping by user or customer can have a group per request. The
ranking and the cap run in SQL (margin.ledger.read.top), so a read holds `limit` groups, not one per group;
histograms are read for the listed groups only. The rest are added up under `others` (their count, figures
and latency: every group's sums less the listed groups', in the same statement; one histogram of the groups
not listed), so the groups and `others` still add up to the totals; `groups_total` (COUNT(*) OVER () before
the LIMIT) says how many there were.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from margin.economics.money import THOUSAND, from_nanousd, usd_str
from margin.errors import InvalidRequest
from margin.ledger import read
from margin.ledger.measures import MICRO, NANO, RELATIVE_ERROR
from margin.ledger.read import Window, parse_when, percentile
from margin.ledger.read.latency import Among, from_histogram

# `service_tier` (the processing tier a request was charged at) has no rollup of its own: its groups are read from
# the window's ledger rows, as a tag key that is not rolled up (margin.ledger.read.plan)
GROUPS = (
    "model", "team", "feature", "customer", "backend", "key", "user", "endpoint", "status", "region", "service_tier",
)  # fmt: skip
PERCENTILES = (50, 95)
PERCENTILE_NOTE = f"nearest rank; totals exact, groups from histograms (within {RELATIVE_ERROR * 100:.2f} %)"


GROUP_LIMIT = 1000  # groups listed over HTTP unless `limit` says otherwise
MAX_GROUP_LIMIT = 10_000


def parse_limit(value: str | None, default: int = GROUP_LIMIT, most: int = MAX_GROUP_LIMIT) -> int:
    """The `limit` query parameter: how many groups (or rows) to list (1 to `most`; else `default`)."""
    if not value:  # absent or empty, as an empty `since` or `until` means the default
        return default
    if not (value.isascii() and value.isdigit() and len(value) <= 5 and 1 <= int(value) <= most):
        raise InvalidRequest(f"limit must be a whole number from 1 to {most:,}", param="limit")
    return int(value)


def check_group(by: str | None) -> str | None:
    if by is not None and by not in GROUPS:
        raise InvalidRequest(f"cannot group by {by!r}; choose one of {', '.join(GROUPS)}", param="by")
    return by


def per_1k_figure(amount: float, tokens: int) -> float | None:
    """Energy (J) or carbon (g) per 1K tokens over `tokens`, those of the requests with that figure (the rollups'
    `energy_tokens` or `co2e_tokens`, 0028); None where none has one: unknown, not 0."""
    return amount / tokens * 1000 if tokens else None


def figures(sums: read.Sums) -> dict[str, Any]:
    """The additive figures of one group (the same keys and rounding everywhere they are shown)."""
    cost = from_nanousd(sums["cost_nanousd"])
    priced = sums["priced_tokens"]
    return {
        "requests": sums["requests"],
        "errors": sums["errors"],
        "input_tokens": sums["input_tokens"],
        "output_tokens": sums["output_tokens"],
        "cost_usd": usd_str(cost),
        "unpriced_requests": sums["unpriced"],
        "usd_per_1k_tokens": usd_str(cost / Decimal(priced) * THOUSAND if priced else None),
        "energy_j": sums["energy_uj"] / MICRO,
        # over the tokens of the requests with an energy figure (a hosted API's have none: not 0 J)
        "energy_j_per_1k_tokens": per_1k_figure(sums["energy_uj"] / MICRO, sums["energy_tokens"]),
        "co2e_g": sums["co2e_ng"] / NANO,
        "cache_hits": sums["cache_hits"],
        "cache_saved_usd": usd_str(from_nanousd(sums["saved_nanousd"])),
        "routing_saved_usd": usd_str(from_nanousd(sums["routing_saved_nanousd"])),
    }


def _latency(e2e: dict[float, float | None], ttft: dict[float, float | None]) -> dict[str, Any]:
    return {"latency_p50_ms": e2e.get(50), "latency_p95_ms": e2e.get(95), "ttft_p50_ms": ttft.get(50)}


def _from(histogram: dict[int, int] | None, qs: tuple[int, ...]) -> dict[float, float | None]:
    return {q: from_histogram(histogram or {}, q) for q in qs}


def _groups(connection: sa.Connection, window: Window, by: str, limit: int | None) -> Any:
    """The listed groups (ranked in SQL, read.top), the rest added up (None when none are left) and how many
    groups there were. Histograms are read for the listed groups, and for the rest as one."""
    kept, count, rest = read.top(connection, window, by, limit)
    listed = Among(tuple(key for key, _ in kept))
    e2e_by = read.histograms(connection, window, by, "e2e", listed)
    ttft_by = read.histograms(connection, window, by, "ttft", listed)
    groups = [
        {"key": key, **figures(sums), **_latency(_from(e2e_by.get(key), PERCENTILES), _from(ttft_by.get(key), (50,)))}
        for key, sums in kept
    ]
    if count == len(kept):
        return groups, None, count
    others = replace(listed, rest=True)
    e2e = read.histograms(connection, window, by, "e2e", others).get(None)
    ttft = read.histograms(connection, window, by, "ttft", others).get(None)
    latency = _latency(_from(e2e, PERCENTILES), _from(ttft, (50,)))
    return groups, {"groups": count - len(kept), **figures(rest), **latency}, count


def summarize(engine: sa.Engine, window: Window, by: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """Totals, and with `by` the groups (the first `limit` by cost; None: all)."""
    check_group(by)
    groups: list[dict[str, Any]] = []
    others: dict[str, Any] | None = None
    count = 0
    with engine.connect() as connection:
        total = read.totals(connection, window)
        e2e = read.exact(connection, window, "e2e", PERCENTILES)
        ttft = read.exact(connection, window, "ttft", (50,))
        if by is not None:
            groups, others, count = _groups(connection, window, by, limit)
    return {
        **window.to_json(),
        "by": by,
        "totals": {**figures(total), **_latency(e2e, ttft)},
        "groups": groups,
        "groups_total": count,
        "others": others,
        "percentiles": PERCENTILE_NOTE,
    }


__all__ = [
    "GROUPS",
    "GROUP_LIMIT",
    "MAX_GROUP_LIMIT",
    "Window",
    "check_group",
    "figures",
    "parse_limit",
    "parse_when",
    "per_1k_figure",
    "percentile",
    "summarize",
]
