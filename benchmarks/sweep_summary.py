"""Pure summary functions of the gateway sweep (benchmarks/gateway_sweep.py): one entry per path and offered
rate, the latency a gateway adds over the direct path at the same rate, and the highest rate it sustains.
No I/O here, so tests can check the arithmetic (tests/benchmarks/test_sweep_summary.py)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SUSTAINED_SUCCESS_PCT = 99.0  # a rate is sustained when at least this share of requests succeeded
SUSTAINED_P99_MS = 50.0  # ... and the 99th percentile latency stayed under this
COLLAPSED_SUCCESS_PCT = 50.0  # below this, higher rates are not tried for that path


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (the ceil(q/100 × n)-th), None when empty."""
    if not values:
        return None
    rank = max(1, min(len(values), math.ceil(q / 100 * len(values))))
    return values[rank - 1]


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def rate_entry(
    offered_rps: float,
    duration_s: float,
    latencies_ms: Mapping[str, Iterable[float]],
    errors: int,
    **extra: Any,
) -> dict[str, Any]:
    """Summarise one open-loop run. `latencies_ms` holds successful requests' latencies by kind (e.g.
    `json` and `stream`); `errors` counts failed or timed-out ones. Extra keys are copied through."""
    every = sorted(x for values in latencies_ms.values() for x in values)
    total = len(every) + errors
    entry: dict[str, Any] = {
        "offered_rps": offered_rps,
        "achieved_rps": round(len(every) / duration_s, 1) if duration_s > 0 else 0.0,
        "requests": total,
        "errors": errors,
        "success_pct": round(100 * len(every) / total, 3) if total else 0.0,
        "p50_ms": _r(percentile(every, 50)),
        "p90_ms": _r(percentile(every, 90)),
        "p99_ms": _r(percentile(every, 99)),
        "max_ms": _r(every[-1] if every else None),
    }
    for kind, values in sorted(latencies_ms.items()):
        ordered = sorted(values)
        entry[f"{kind}_p50_ms"] = _r(percentile(ordered, 50))
        entry[f"{kind}_p99_ms"] = _r(percentile(ordered, 99))
    entry.update(extra)
    return entry


def is_sustained(
    entry: Mapping[str, Any], min_success_pct: float = SUSTAINED_SUCCESS_PCT, max_p99_ms: float = SUSTAINED_P99_MS
) -> bool:
    p99 = entry.get("p99_ms")
    return entry.get("success_pct", 0.0) >= min_success_pct and p99 is not None and p99 < max_p99_ms


def max_sustained_rps(entries: Iterable[Mapping[str, Any]], **criteria: float) -> float | None:
    """The highest offered rate that was sustained (≥ 99 % success and p99 < 50 ms by default); None if
    no rate was. Rates that were skipped (no `p99_ms`) count as not sustained."""
    passed = [entry["offered_rps"] for entry in entries if is_sustained(entry, **criteria)]
    return max(passed) if passed else None


def max_served_rps(entries: Iterable[Mapping[str, Any]], min_share: float = 0.99) -> float | None:
    """The highest offered rate answered without loss, whatever the latency: ≥ 99 % success and ≥ 99 % of
    the offered rate achieved. On a machine shared with other jobs the p99 bound of `max_sustained_rps`
    mostly measures the scheduler; this is the throughput ceiling beside it."""
    passed = [
        entry["offered_rps"]
        for entry in entries
        if entry.get("success_pct", 0.0) >= 100 * min_share
        and entry.get("achieved_rps", 0.0) >= min_share * entry["offered_rps"]
    ]
    return max(passed) if passed else None


def is_collapsed(entry: Mapping[str, Any], threshold_pct: float = COLLAPSED_SUCCESS_PCT) -> bool:
    return bool(entry.get("success_pct", 0.0) < threshold_pct)


def added_latency(
    entries: Iterable[Mapping[str, Any]], direct: Iterable[Mapping[str, Any]]
) -> list[dict[str, float | None]]:
    """Per offered rate: the gateway's p50/p99 minus the direct path's at the same rate (None where either
    side has no latency for that rate)."""
    baseline = {entry["offered_rps"]: entry for entry in direct}
    added: list[dict[str, float | None]] = []
    for entry in entries:
        base = baseline.get(entry["offered_rps"], {})
        row: dict[str, float | None] = {"offered_rps": entry["offered_rps"]}
        for q in ("p50", "p99"):
            mine, theirs = entry.get(f"{q}_ms"), base.get(f"{q}_ms")
            row[f"added_{q}_ms"] = None if mine is None or theirs is None else round(mine - theirs, 3)
        added.append(row)
    return added


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is unknown or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 2)


def _at(entries: Iterable[Mapping[str, Any]], rate: float) -> Mapping[str, Any]:
    return next((entry for entry in entries if entry["offered_rps"] == rate and "p50_ms" in entry), {})


def versus_bare(
    margin: Sequence[Mapping[str, Any]],
    bare: Sequence[Mapping[str, Any]],
    direct: Sequence[Mapping[str, Any]],
    rate: float = 500.0,
) -> dict[str, Any]:
    """Issue 14's targets, margin against the bare proxy in one run: at `rate`, margin's latency added over
    direct within 0.2 ms (p50) and 1 ms (p99) of the bare proxy's; margin's max sustained RPS at least the
    bare proxy's; margin's gateway CPU per request at most 1.3× the bare proxy's."""
    m, b, d = _at(margin, rate), _at(bare, rate), _at(direct, rate)

    def added(entry: Mapping[str, Any], q: str) -> float | None:
        mine, base = entry.get(f"{q}_ms"), d.get(f"{q}_ms")
        return None if mine is None or base is None else mine - base

    def over_bare(q: str) -> float | None:
        mine, theirs = added(m, q), added(b, q)
        return None if mine is None or theirs is None else round(mine - theirs, 3)

    cpu_m, cpu_b = m.get("gateway_cpu_us_per_request"), b.get("gateway_cpu_us_per_request")
    sustained_m, sustained_b = max_sustained_rps(margin), max_sustained_rps(bare)
    targets: dict[str, Any] = {
        "added_p50_ms_over_bare": {"target": 0.2, "measured": over_bare("p50"), "rate": rate},
        "added_p99_ms_over_bare": {"target": 1.0, "measured": over_bare("p99"), "rate": rate},
        "max_sustained_rps_margin_over_bare": {
            "target": 1.0,
            "measured": ratio(sustained_m, sustained_b),
            "margin": sustained_m,
            "bare": sustained_b,
        },
        "gateway_cpu_per_request_margin_over_bare": {
            "target": 1.3,
            "measured": ratio(cpu_m, cpu_b),
            "margin_us": cpu_m,
            "bare_us": cpu_b,
            "rate": rate,
        },
    }
    for name, item in targets.items():
        measured = item["measured"]
        at_most = not name.startswith("max_sustained")
        item["met"] = None if measured is None else (measured <= item["target"] if at_most else measured >= 1.0)
    return targets
