"""Report notes and the Pareto frontier on hand-made results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from margin.evals.report import markdown, write_report
from margin.evals.summary import pareto


def result(name: str, score: float, per_success: str | None) -> dict[str, Any]:
    interval = {"value": score, "low": score - 0.1, "high": score + 0.1, "level": 0.95}
    return {
        "variant": name,
        "quantization": None,
        "score": interval,
        "successes": 1,
        "n": 2,
        "cost": {"per_item_usd": per_success, "per_success_usd": per_success, "source": "gateway"},
        "tokens": {"output_per_item": 3.0},
        "latency_ms": {"ttft": {"p50": 1.0, "p95": 2.0}, "e2e": {"p50": 3.0, "p95": 4.0}},
        "decode_tokens_per_s": 10.0,
        "energy_j_per_item": None,
        "co2e_g_per_item": None,
    }


def results(judge: dict[str, Any] | None, variants: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "experiment": "t",
        "suite": "s.jsonl",
        "items": 2,
        "seed": 0,
        "baseline": variants[0]["variant"],
        "judge": judge,
        "variants": variants,
        "comparisons": {},
        "pareto_frontier": pareto(variants),
        "run": {},
    }


def test_pareto_keeps_variants_no_other_beats_on_both_and_leaves_unknown_cost_out() -> None:
    variants = [
        result("cheap-bad", 0.2, "0.001"),
        result("mid", 0.5, "0.002"),
        result("dominated", 0.4, "0.003"),
        result("best", 0.9, "0.010"),
        result("unknown", 0.95, None),
        result("tie", 0.5, "0.002"),
    ]
    assert pareto(variants) == ["cheap-bad", "mid", "best", "tie"]


def test_a_small_judge_is_called_untrustworthy_in_the_report(tmp_path: Path) -> None:
    small = results({"model": "smollm2-135m-instruct", "untrustworthy": True}, [result("a", 0.5, "0.001")])
    assert "not trustworthy" in markdown(small)
    strong = results({"model": "gpt-4o", "untrustworthy": False}, [result("a", 0.5, "0.001")])
    assert "Judge: `gpt-4o`" in markdown(strong) and "not trustworthy" not in markdown(strong)
    assert "not trustworthy" in (write_report(small, tmp_path)[1]).read_text()


def test_no_known_cost_means_no_plot_and_unknown_in_the_table(tmp_path: Path) -> None:
    written = write_report(results(None, [result("a", 0.5, None)]), tmp_path)
    assert [p.name for p in written] == ["report.md", "report.html"]
    assert "| unknown | unknown |" in (tmp_path / "report.md").read_text()
