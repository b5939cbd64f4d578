"""The summary view (`margin report`, `/admin/usage`, `/v1/margin/usage`): figures per group and in total,
rendered from margin.ledger.read. Money is exact (integer nano-USD sums, decimal strings); energy and carbon
are integer microjoules and nanograms, shown as J and g.

Latency percentiles are nearest rank. The totals' are exact; each group's comes from the latency histogram,
within 4.43 % of the exact value (margin.ledger.read.latency) — the JSON says so under `percentiles`.

Groups are ranked by cost, then requests, then key. Over HTTP at most `limit` of them are listed (default
GROUP_LIMIT, at most MAX_GROUP_LIMIT): a grouping by user or customer can have a group per request. The cap
bounds the answer (its JSON, its encoding, the per-group percentiles), not the read: every group's sums and
histogram are still added up first. The rest are added up under `others` (their count, figures and latency),
so the groups and `others` still add up to the totals; `groups_total` says how many there were.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from margin.economics.money import THOUSAND, from_nanousd, usd_str
from margin.errors import InvalidRequest
from margin.ledger import read
from margin.ledger.measures import MICRO, NANO, RELATIVE_ERROR
from margin.ledger.read import Window, parse_when, percentile
from margin.ledger.read.latency import from_histogram

GROUPS = ("model", "team", "feature", "customer", "backend", "key", "user", "endpoint", "status", "region")
PERCENTILES = (50, 95)
PERCENTILE_NOTE = f"nearest rank; totals exact, groups from histograms (within {RELATIVE_ERROR * 100:.2f} %)"


GROUP_LIMIT = 1000  # groups listed over HTTP unless `limit` says otherwise
MAX_GROUP_LIMIT = 10_000


def parse_limit(value: str | None) -> int:
    """The `limit` query parameter: how many groups to list (1 to MAX_GROUP_LIMIT; default GROUP_LIMIT)."""
    if not value:  # absent or empty, as an empty `since` or `until` means the default
        return GROUP_LIMIT
    if not (value.isascii() and value.isdigit() and len(value) <= 5 and 1 <= int(value) <= MAX_GROUP_LIMIT):
        raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_GROUP_LIMIT:,}", param="limit")
    return int(value)


def ranked(parts: dict[Any, read.Sums], limit: int | None) -> tuple[list[tuple[Any, read.Sums]], list[Any]]:
    """The groups by cost, then requests, then key: the first `limit` (None: all), and the keys of the rest."""
    order = sorted(parts.items(), key=lambda kv: (-kv[1]["cost_nanousd"], -kv[1]["requests"], str(kv[0])))
    if limit is None or len(order) <= limit:
        return order, []
    return order[:limit], [key for key, _ in order[limit:]]


def check_group(by: str | None) -> str | None:
    if by is not None and by not in GROUPS:
        raise InvalidRequest(f"cannot group by {by!r}; choose one of {', '.join(GROUPS)}", param="by")
    return by


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
        "co2e_g": sums["co2e_ng"] / NANO,
        "cache_hits": sums["cache_hits"],
        "cache_saved_usd": usd_str(from_nanousd(sums["saved_nanousd"])),
        "routing_saved_usd": usd_str(from_nanousd(sums["routing_saved_nanousd"])),
    }


def _latency(e2e: dict[float, float | None], ttft: dict[float, float | None]) -> dict[str, Any]:
    return {"latency_p50_ms": e2e.get(50), "latency_p95_ms": e2e.get(95), "ttft_p50_ms": ttft.get(50)}


def _from(histogram: dict[int, int] | None, qs: tuple[int, ...]) -> dict[float, float | None]:
    return {q: from_histogram(histogram or {}, q) for q in qs}


def _merged(histograms: dict[Any, dict[int, int]], keys: list[Any]) -> dict[int, int]:
    out: dict[int, int] = {}
    for key in keys:
        for bin_, n in histograms.get(key, {}).items():
            out[bin_] = out.get(bin_, 0) + n
    return out


def summarize(engine: sa.Engine, window: Window, by: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """Totals, and with `by` the groups (the first `limit` by cost; None: all)."""
    check_group(by)
    groups: list[dict[str, Any]] = []
    others: dict[str, Any] | None = None
    parts: dict[Any, read.Sums] = {}
    with engine.connect() as connection:
        total = read.totals(connection, window)
        e2e = read.exact(connection, window, "e2e", PERCENTILES)
        ttft = read.exact(connection, window, "ttft", (50,))
        if by is not None:
            e2e_by = read.histograms(connection, window, by, "e2e")
            ttft_by = read.histograms(connection, window, by, "ttft")
            parts = read.grouped(connection, window, by)
    if by is not None:
        kept, cut = ranked(parts, limit)
        for key, sums in kept:
            latency = _latency(_from(e2e_by.get(key), PERCENTILES), _from(ttft_by.get(key), (50,)))
            groups.append({"key": key, **figures(sums), **latency})
        if cut:
            latency = _latency(_from(_merged(e2e_by, cut), PERCENTILES), _from(_merged(ttft_by, cut), (50,)))
            others = {"groups": len(cut), **figures(read.total(parts[key] for key in cut)), **latency}
    return {
        **window.to_json(),
        "by": by,
        "totals": {**figures(total), **_latency(e2e, ttft)},
        "groups": groups,
        "groups_total": len(parts),
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
    "percentile",
    "ranked",
    "summarize",
]
