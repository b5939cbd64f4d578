"""Presentation for `margin eval routing`: the summary table, the PGR plot and the score latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from margin.evals.routing import RoutingReport
from margin.routing.learned import LearnedRouter
from margin.routing.metrics import summary

STYLE = {"random": ":", "prompt-length": "--", "oracle": "-.", "margin": "-"}


def result_tables(report: RoutingReport) -> list[Any]:
    from rich.table import Table

    tables = []
    for name, result in report.datasets.items():
        title = f"{name}: n={result.n}, weak {result.weak_accuracy:.3f}, strong {result.strong_accuracy:.3f}"
        table = Table("method", "CPT(50%)", "CPT(80%)", "APGR", title=title)
        rows = {**result.methods, **{f"learner {k}": v for k, v in result.learners.items()}}
        for method, outcome in rows.items():
            values = summary(outcome.curve)
            table.add_row(method, f"{values['cpt50']:.1%}", f"{values['cpt80']:.1%}", f"{values['apgr']:.3f}")
        tables.append(table)
    return tables


def plot(report: RoutingReport, path: Path) -> Path:
    """PGR vs strong-call share, one panel per dataset (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.datasets)
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.8), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        result = report.datasets[name]
        for method, outcome in result.methods.items():
            label = f"margin ({report.router})" if method == "margin" else method
            values = summary(outcome.curve)
            axis.plot(
                outcome.curve.share * 100,
                outcome.curve.pgr,
                STYLE.get(method, "-"),
                label=f"{label}: CPT50 {values['cpt50']:.1%}, APGR {values['apgr']:.3f}",
            )
        axis.axhline(0.5, color="grey", linewidth=0.5)
        axis.axhline(0.8, color="grey", linewidth=0.5)
        axis.set(title=f"{name} (n={result.n}, out-of-fold)", xlabel="calls to strong model (%)", ylabel="PGR")
        axis.set_xlim(0, 100)
        top = max(float(outcome.curve.pgr.max()) for outcome in result.methods.values())
        axis.set_ylim(-0.05, max(1.05, top + 0.05))
        axis.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def score_latency(router: LearnedRouter, prompts: Sequence[str], repeats: int = 2000) -> dict[str, Any]:
    """p50/p99 of one `p_weak_ok` call (featurisation included), after a warm-up, cycling over `prompts`."""
    for prompt in prompts[:20]:
        router.p_weak_ok(prompt)
    samples = []
    for i in range(repeats):
        prompt = prompts[i % len(prompts)]
        started = time.perf_counter()
        router.p_weak_ok(prompt)
        samples.append((time.perf_counter() - started) * 1000.0)
    samples.sort()
    return {
        "calls": repeats,
        "p50_ms": round(statistics.median(samples), 4),
        "p99_ms": round(samples[int(0.99 * (len(samples) - 1))], 4),
        "mean_ms": round(statistics.fmean(samples), 4),
        "needs_embedding": router.needs_embedding,
        "learner": router.meta.get("learner"),
    }
