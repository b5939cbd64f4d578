"""From records (one per answer) and ledger rows to per-variant results and paired comparisons.

Per variant: score and pass rate with bootstrap 95% intervals, $ per item and $ per successful task
(exact Decimal sums of the gateway's per-request cost), tokens, TTFT/E2E p50/p95 (client side), decode
tok/s, J and gCO2e per item (ledger rows), and the judge's own cost apart. Against the baseline: the
paired difference over the items both answered (paired bootstrap) and McNemar's exact test.
A quality-vs-$/task Pareto frontier marks the variants no other variant beats on both.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from margin.bench.metrics import stats_ms
from margin.economics.money import MILLION, usd_str
from margin.errors import ConfigError
from margin.evals.experiment import Experiment, Variant
from margin.evals.judge import untrustworthy
from margin.evals.stats import bootstrap_mean, compare
from margin.userfiles import validation_message


def latest(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The last record of each (variant, item): a resumed run's retry replaces the failed attempt."""
    return {(r["variant"], r["item"]): r for r in records}


def _cost(record: dict[str, Any], variant: Variant, direct: bool) -> tuple[Decimal | None, str]:
    call = record["call"]
    if call.get("cost_usd") is not None and not direct:
        return Decimal(call["cost_usd"]), "gateway"
    if variant.price is not None and call.get("input_tokens") is not None:
        tokens_in, tokens_out = call["input_tokens"] or 0, call["output_tokens"] or 0
        return (tokens_in * variant.price.input + tokens_out * variant.price.output) / MILLION, "price"
    return None, "unknown"


def _money(total: Decimal | None, count: int) -> str | None:
    return usd_str(total / count, 12) if total is not None and count else None


def _sum_floats(values: list[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) if present and len(present) == len(values) else None


def _decode_tps(calls: list[dict[str, Any]]) -> float | None:
    rates = [
        (c["output_tokens"] - 1) / (c["e2e_s"] - c["ttft_s"])
        for c in calls
        if c.get("ttft_s") is not None and (c.get("output_tokens") or 0) > 1 and c["e2e_s"] > c["ttft_s"]
    ]
    return statistics.median(rates) if rates else None


def _error(call: dict[str, Any]) -> str:
    """What a failed call said: the transport's error or the answer's error body, else its HTTP status."""
    return " ".join(str(call.get("error") or f"HTTP {call.get('status')}").split())


def variant_summary(
    variant: Variant, records: list[dict[str, Any]], rows: dict[str, dict[str, Any]], direct: bool, seed: int
) -> dict[str, Any]:
    calls = [r["call"] for r in records]
    scores = [float(r["grade"]["score"]) for r in records]
    passes = [1.0 if r["grade"]["passed"] else 0.0 for r in records]
    costs = [_cost(r, variant, direct) for r in records]
    cost_sources = sorted({source for _, source in costs})
    total = None if any(c is None for c, _ in costs) else sum((c for c, _ in costs if c is not None), Decimal(0))
    successes = int(sum(passes))
    ledger = [rows.get(c.get("request_id") or "") for c in calls]
    energy = _sum_floats([row.get("energy_j") if row else None for row in ledger])
    carbon = _sum_floats([row.get("co2e_g") if row else None for row in ledger])
    judge_costs = [Decimal(r["judge"]["cost_usd"]) for r in records if r.get("judge") and r["judge"].get("cost_usd")]
    n = len(records)
    return {
        "variant": variant.name,
        "model": variant.model,
        "backend": variant.backend,
        "quantization": variant.quantization,
        "n": n,
        "errors": sum(1 for c in calls if c.get("status") != 200 or c.get("error")),
        "first_error": next((_error(c) for c in calls if c.get("status") != 200 or c.get("error")), None),
        "score": bootstrap_mean(scores, seed=seed).to_json(),
        "pass_rate": bootstrap_mean(passes, seed=seed).to_json(),
        "successes": successes,
        "cost": {
            "source": "+".join(cost_sources),
            "total_usd": usd_str(total, 12) if total is not None else None,
            "per_item_usd": _money(total, n),
            "per_success_usd": _money(total, successes),
            "judge_total_usd": usd_str(sum(judge_costs, Decimal(0)), 12) if judge_costs else None,
        },
        "tokens": {
            "input": sum(c.get("input_tokens") or 0 for c in calls),
            "output": sum(c.get("output_tokens") or 0 for c in calls),
            "output_per_item": (sum(c.get("output_tokens") or 0 for c in calls) / n) if n else None,
        },
        "latency_ms": {
            "ttft": stats_ms([c["ttft_s"] for c in calls if c.get("ttft_s") is not None], (50, 95)),
            "e2e": stats_ms([c["e2e_s"] for c in calls if c.get("status") == 200], (50, 95)),
        },
        "decode_tokens_per_s": _decode_tps(calls),
        "energy_j_per_item": energy / n if energy is not None and n else None,
        "co2e_g_per_item": carbon / n if carbon is not None and n else None,
        "ledger_rows": sum(1 for row in ledger if row),
        "by_tag": _by_tag(records),
    }


def _by_tag(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for record in records:
        for key, value in (record.get("tags") or {}).items():
            if key != "suite":
                groups[f"{key}={value}"].append(bool(record["grade"]["passed"]))
    return {name: {"n": len(v), "pass_rate": sum(v) / len(v)} for name, v in sorted(groups.items())}


def comparisons(
    by_variant: dict[str, dict[str, dict[str, Any]]], baseline: str, seed: int
) -> dict[str, dict[str, Any]]:
    """Each variant against the baseline over the items both have (paired by item id)."""
    base = by_variant.get(baseline, {})
    out = {}
    for name, records in by_variant.items():
        if name == baseline:
            continue
        common = sorted(set(base) & set(records))
        paired = compare(
            [float(base[i]["grade"]["score"]) for i in common],
            [float(records[i]["grade"]["score"]) for i in common],
            [bool(base[i]["grade"]["passed"]) for i in common],
            [bool(records[i]["grade"]["passed"]) for i in common],
            seed=seed,
        )
        out[name] = {"baseline": baseline, **paired.to_json()}
    return out


def pareto(variants: list[dict[str, Any]]) -> list[str]:
    """Variants on the frontier of (higher score, lower $ per successful task); unknown cost is left out."""
    points = [
        (v["variant"], float(v["score"]["value"]), Decimal(v["cost"]["per_success_usd"]))
        for v in variants
        if v["cost"]["per_success_usd"] is not None
    ]
    return [
        name
        for name, score, cost in points
        if not any(s >= score and c <= cost and (s > score or c < cost) for _, s, c in points)
    ]


def summarize(
    meta: dict[str, Any],
    records: list[dict[str, Any]],
    rows: dict[str, dict[str, Any]],
    experiment: Experiment,
    baseline: str | None = None,
) -> dict[str, Any]:
    baseline = baseline or experiment.baseline_name()
    chosen = latest(records)
    by_variant: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (variant, item), record in chosen.items():
        by_variant[variant][item] = record
    variants = [
        variant_summary(v, list(by_variant[v.name].values()), rows, experiment.target.direct, experiment.seed)
        for v in experiment.all_variants()
        if by_variant.get(v.name)
    ]
    judge = experiment.judge.model if experiment.judge else None
    return {
        "schema": "margin.eval.results/1",
        "experiment": experiment.name,
        "digest": meta["digest"],
        "suite": experiment.suite,
        "seed": experiment.seed,
        "items": meta["items"],
        "baseline": baseline,
        "judge": {"model": judge, "untrustworthy": untrustworthy(judge)} if judge else None,
        "variants": variants,
        "comparisons": comparisons(by_variant, baseline, experiment.seed),
        "pareto_frontier": pareto(variants),
        "run": {k: meta.get(k) for k in ("started_unix", "finished_unix", "versions", "host", "ledger", "resumed")},
    }


def load_run(run_dir: Path, baseline: str | None = None) -> dict[str, Any]:
    """Summarize a run folder again from its records (and ledger rows), optionally against another
    baseline; works on an interrupted run too (with the answers it has)."""
    from margin.evals.records import read_meta, read_records

    meta = read_meta(run_dir)
    if meta is None:
        raise ConfigError(f"{run_dir} is not a run folder (no run.json)")
    try:
        experiment = Experiment.model_validate(meta["experiment"])
    except ValidationError as exc:
        raise ConfigError(f"{run_dir / 'run.json'}: experiment: {validation_message(exc)}") from exc
    names = [v.name for v in experiment.all_variants()]
    if baseline is not None and baseline not in names:
        raise ConfigError(f"baseline {baseline!r} is not a variant of this run; variants: {', '.join(names)}")
    rows: dict[str, dict[str, Any]] = {}
    ledger_path = run_dir / "ledger.jsonl"
    if ledger_path.is_file():
        for line in ledger_path.read_bytes().splitlines():
            row = orjson.loads(line)
            rows[row["request_id"]] = row
    return summarize(meta, read_records(run_dir / "records.jsonl"), rows, experiment, baseline)
