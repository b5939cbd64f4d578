"""Serving metrics with `vllm bench serve`'s definitions (DESIGN §7), computed from raw request records.

- TTFT: first chunk carrying text − send time. Chunks without text (the role header, the finish chunk, the
  usage chunk) are not tokens and never start the clock.
- TPOT: (E2EL − TTFT) / (output_tokens − 1), only for requests with ≥ 2 output tokens.
- ITL: the gaps between consecutive text chunks, pooled over all requests.
- E2EL: send → the stream's last event.
- Throughput: completed requests / duration, output tokens / duration, (input + output) tokens / duration.
- Goodput: completed requests meeting every SLO given / duration. As in vLLM, a 1-token answer's TPOT counts
  as 0 (it meets any TPOT SLO); a completed answer without any text has no TTFT and fails a TTFT SLO;
  failed requests are never good.
Percentiles interpolate linearly (numpy's default, as vLLM).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from margin.bench.records import RequestRecord
from margin.errors import InvalidRequest

PERCENTILES = (50, 90, 95, 99)
SLO_METRICS = ("ttft", "tpot", "e2el")


def stats_ms(values_s: Sequence[float], percentiles: Iterable[int] = PERCENTILES) -> dict[str, float | None]:
    """mean, std, min, max and percentiles of seconds, in milliseconds (None when there is no value)."""
    keys = ["mean", "std", "min", "max", *(f"p{p}" for p in percentiles)]
    if not values_s:
        return dict.fromkeys(keys)
    arr = np.asarray(values_s, dtype=float) * 1000.0
    out: dict[str, float | None] = {
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "min": float(arr.min()),
        "max": float(arr.max()),
    }
    for p in percentiles:
        out[f"p{p}"] = float(np.percentile(arr, p))
    return {k: None if v is None else round(v, 4) for k, v in out.items()}


def is_good(record: RequestRecord, slos_ms: dict[str, float]) -> bool:
    """A completed request meeting every SLO (milliseconds) in `slos_ms` (keys: ttft, tpot, e2el)."""
    if not record.ok:
        return False
    for name, limit_ms in slos_ms.items():
        if name == "tpot":
            value = record.tpot_s if record.output_tokens >= 2 else 0.0
        elif name == "ttft":
            value = record.ttft_s
        elif name == "e2el":
            value = record.e2el_s
        else:
            raise InvalidRequest(f"unknown SLO metric {name!r}; known: {', '.join(SLO_METRICS)}")
        if value is None or value * 1000.0 > limit_ms:
            return False
    return True


def busy_seconds(records: Sequence[RequestRecord]) -> float:
    """Length of the union of [send, end] over the requests: time with at least one request in flight."""
    spans = sorted((r.sent_s, r.end_s) for r in records if r.end_s is not None)
    total, cur_start, cur_end = 0.0, None, None
    for start, end in spans:
        if cur_end is None or start > cur_end:
            if cur_end is not None and cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None and cur_start is not None:
        total += cur_end - cur_start
    return total


def summarize(records: Sequence[RequestRecord], duration_s: float, slos_ms: dict[str, float]) -> dict[str, Any]:
    """The metrics block of a result for one load point."""
    done = [r for r in records if r.ok]
    ttfts = [t for r in done if (t := r.ttft_s) is not None]
    tpots = [t for r in done if (t := r.tpot_s) is not None]
    e2els = [t for r in done if (t := r.e2el_s) is not None]
    itls = [gap for r in done for gap in r.itl_s]
    input_tokens = sum(r.input_tokens or r.prompt_len_est or 0 for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    good = sum(1 for r in done if is_good(r, slos_ms)) if slos_ms else None
    dur = duration_s if duration_s > 0 else float("nan")
    busy = busy_seconds(records)
    return {
        "requests": len(records),
        "completed": len(done),
        "failed": len(records) - len(done),
        "duration_s": round(duration_s, 6),
        "input_tokens": input_tokens,
        "input_tokens_source": _input_source(done),
        "output_tokens": output_tokens,
        "output_tokens_source": _output_source(done),
        "request_throughput": _rate(len(done), dur),
        "output_throughput": _rate(output_tokens, dur),
        "total_token_throughput": _rate(input_tokens + output_tokens, dur),
        "goodput": None if good is None else _rate(good, dur),
        "good_requests": good,
        "slos_ms": slos_ms,
        "ttft_ms": stats_ms(ttfts),
        "tpot_ms": stats_ms(tpots),
        "itl_ms": stats_ms(itls),
        "e2el_ms": stats_ms(e2els),
        "busy_fraction": round(busy / duration_s, 4) if duration_s > 0 else None,
        "mean_in_flight": round(sum(e2els) / duration_s, 4) if duration_s > 0 else None,
    }


def _rate(count: float, duration_s: float) -> float:
    return round(count / duration_s, 4)


def _input_source(done: Sequence[RequestRecord]) -> str:
    if done and all(r.input_tokens is not None for r in done):
        return "usage"
    return "estimated" if any(r.input_tokens is None for r in done) else "none"


def _output_source(done: Sequence[RequestRecord]) -> str:
    sources = {r.tokens_source for r in done}
    return sources.pop() if len(sources) == 1 else ("mixed" if sources else "none")


def parse_slos(items: Iterable[str]) -> dict[str, float]:
    """`ttft=500` `tpot=50` `e2el=2000` (milliseconds) → {"ttft": 500.0, ...}."""
    slos: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        try:
            bound = float(value)
        except ValueError:  # `ttft=abc` was a traceback
            bound = math.nan
        if not sep or name not in SLO_METRICS or not 0 < bound < math.inf:  # NaN fails too
            raise InvalidRequest(f"bad SLO {item!r}: use ttft=MS, tpot=MS or e2el=MS (milliseconds above 0)")
        slos[name] = bound
    return slos
