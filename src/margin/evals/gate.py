"""Release gates over a finished run: cost, quality and SLO rules, each printed with what was measured.

- `--max-cost-increase 5%`: every candidate's $ per successful task (per item with `--cost-per item`) may
  exceed the baseline's by at most this share. Unknown cost fails the rule (it cannot be shown to hold).
- `--max-quality-drop 1.0`: the drop in score is measured in percentage points of the paired difference
  (candidate − baseline, same items). The rule fails when the drop's point estimate exceeds the limit *or*
  the lower end of its 95% paired-bootstrap interval is below −limit, i.e. a drop larger than the limit
  cannot be ruled out. Strict on purpose: with few items, gates refuse rather than guess. A negative limit asks
  for a gain: `--max-quality-drop -1` passes only when the candidate is at least 1 point better, its interval's
  lower end included (the same two conditions, with −limit = +1). Limits are within ±100 points. It fails,
  "not measured", where every request of the baseline or of the candidate failed (all their items score 0).
- `--slo ttft_p95_ms=800` (also ttft_p50_ms, e2e_p50_ms, e2e_p95_ms, error_rate, decode_tps_min): every
  candidate must meet it (the baseline too, with `--slo-baseline`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from margin.errors import InvalidRequest

SLO_METRICS = ("ttft_p50_ms", "ttft_p95_ms", "e2e_p50_ms", "e2e_p95_ms", "error_rate", "decode_tps_min")


@dataclass(frozen=True, slots=True)
class RuleResult:
    rule: str
    variant: str
    passed: bool
    measured: str

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "variant": self.variant, "passed": self.passed, "measured": self.measured}


def parse_share(text: str) -> Decimal:
    """'5%' → 0.05, '0.05' → 0.05."""
    try:
        return Decimal(text.removesuffix("%")) / 100 if text.endswith("%") else Decimal(text)
    except InvalidOperation as exc:
        raise InvalidRequest(f"not a share: {text!r} (use 5% or 0.05)") from exc


def parse_slos(items: Iterable[str]) -> dict[str, float]:
    slos = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in SLO_METRICS or not value:
            raise InvalidRequest(f"bad --slo {item!r}: use NAME=VALUE with NAME in {', '.join(SLO_METRICS)}")
        try:
            slos[name] = float(value)
        except ValueError as exc:
            raise InvalidRequest(f"bad --slo value in {item!r}") from exc
    return slos


def slo_value(variant: dict[str, Any], name: str) -> float | None:
    latency = variant["latency_ms"]
    if name == "error_rate":
        return variant["errors"] / variant["n"] if variant["n"] else None
    if name == "decode_tps_min":
        value = variant.get("decode_tokens_per_s")
        return None if value is None else float(value)
    metric, _, stat = name.removesuffix("_ms").partition("_")
    value = latency[metric].get(stat)
    return None if value is None else float(value)


def _cost_rule(base: dict[str, Any], cand: dict[str, Any], limit: Decimal, per: str) -> RuleResult:
    key = "per_success_usd" if per == "success" else "per_item_usd"
    rule = f"cost per {per} ≤ baseline + {limit * 100:g}%"
    b, c = base["cost"][key], cand["cost"][key]
    if b is None or c is None or Decimal(b) == 0:
        return RuleResult(rule, cand["variant"], False, f"cost unknown (baseline {b}, candidate {c})")
    change = Decimal(c) / Decimal(b) - 1
    return RuleResult(rule, cand["variant"], change <= limit, f"${c} vs ${b} ({change:+.2%})")


def check_quality_limit(limit_pp: float) -> float:
    """Percentage points a candidate may lose (negative: must gain); NaN, ±inf and beyond ±100 are refused."""
    if not math.isfinite(limit_pp) or abs(limit_pp) > 100:
        raise InvalidRequest(
            f"--max-quality-drop {limit_pp:g}: use percentage points from -100 to 100 (negative: the gain required)"
        )
    return limit_pp


def all_failed(variant: dict[str, Any]) -> bool:
    """Every request of this variant (a results.json summary) failed: its items all score 0 and nothing of it
    was measured (two such variants compare "equal")."""
    return bool(variant.get("n")) and int(variant.get("errors") or 0) >= int(variant["n"])


def _quality_rule(
    comparison: dict[str, Any] | None, variant: str, limit_pp: float, failed: str | None = None
) -> RuleResult:
    wanted = f"quality drop ≤ {limit_pp:g} pp" if limit_pp >= 0 else f"quality gain ≥ {-limit_pp:g} pp"
    rule = f"{wanted} (paired, 95% CI)"
    if failed is not None:
        return RuleResult(rule, variant, False, f"not measured: every request of {failed} failed")
    if comparison is None:
        return RuleResult(rule, variant, False, "no paired comparison with the baseline")
    diff = comparison["diff"]
    value, low, high = (100 * float(diff[k]) for k in ("value", "low", "high"))
    ok = value >= -limit_pp and low >= -limit_pp
    measured = f"Δ {value:+.1f} pp [{low:+.1f}, {high:+.1f}] over {comparison['n']} items"
    measured += f", McNemar p={comparison['mcnemar_p']:.3g}"
    return RuleResult(rule, variant, ok, measured)


def _slo_rule(variant: dict[str, Any], name: str, limit: float) -> RuleResult:
    value = slo_value(variant, name)
    minimum = name == "decode_tps_min"
    rule = f"{name} {'≥' if minimum else '≤'} {limit:g}"
    if value is None:
        return RuleResult(rule, variant["variant"], False, "not measured")
    ok = value >= limit if minimum else value <= limit
    return RuleResult(rule, variant["variant"], ok, f"{value:.4g}")


def evaluate(
    results: dict[str, Any],
    baseline: str,
    *,
    max_cost_increase: Decimal | None = None,
    max_quality_drop: float | None = None,
    slos: dict[str, float] | None = None,
    cost_per: str = "success",
    candidates: list[str] | None = None,
    slo_baseline: bool = False,
) -> list[RuleResult]:
    if max_quality_drop is not None:
        check_quality_limit(max_quality_drop)
    by_name = {v["variant"]: v for v in results["variants"]}
    if baseline not in by_name:
        raise InvalidRequest(f"baseline {baseline!r} is not in the run; variants: {', '.join(by_name)}")
    names = candidates or [name for name in by_name if name != baseline]
    if baseline in names:  # it passed every rule against itself
        raise InvalidRequest(f"{baseline!r} is the baseline: a candidate is gated against it, not as it")
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise InvalidRequest(f"unknown variant(s) {', '.join(unknown)}; variants: {', '.join(by_name)}")
    comparisons = {name: c for name, c in results.get("comparisons", {}).items() if c.get("baseline") == baseline}
    rules: list[RuleResult] = []
    for name in names:
        cand = by_name[name]
        if max_cost_increase is not None:
            rules.append(_cost_rule(by_name[baseline], cand, max_cost_increase, cost_per))
        if max_quality_drop is not None:
            failed = next((v["variant"] for v in (by_name[baseline], cand) if all_failed(v)), None)
            rules.append(_quality_rule(comparisons.get(name), name, max_quality_drop, failed))
        rules.extend(_slo_rule(cand, metric, limit) for metric, limit in (slos or {}).items())
    if slo_baseline:
        rules.extend(_slo_rule(by_name[baseline], metric, limit) for metric, limit in (slos or {}).items())
    return rules
