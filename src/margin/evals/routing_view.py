"""Presentation for `margin eval routing`: the summary table, the PGR plot and the score latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from margin.evals.routing import RoutingReport, train_artifact
from margin.routing.learned import LearnedRouter
from margin.routing.metrics import summary
from margin.routing.routellm import Example

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


def plot_report(report: RoutingReport, path: Path) -> Path:
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


def write_outputs(
    report: RoutingReport,
    loaded: dict[str, list[Example]],
    console: Any,
    *,
    out: str | None,
    plot: str | None,
    train_out: str | None,
    latency_out: str | None,
    cache: Path,
    meta: dict[str, Any] | None = None,
) -> None:
    """The files `margin eval routing` was asked for: results JSON, PNG, trained router and its latency."""
    import orjson

    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2))
    if plot:
        plot_report(report, Path(plot))
    if not train_out:
        return
    saved = train_artifact(report, loaded, Path(train_out), cache_path=cache, meta=meta)
    console.print(f"router saved to {saved} ({saved.stat().st_size} bytes)")
    if latency_out:
        prompts = [e.prompt for examples in loaded.values() for e in examples[::25]]
        latency = score_latency(LearnedRouter.load(saved), prompts)
        Path(latency_out).parent.mkdir(parents=True, exist_ok=True)
        Path(latency_out).write_bytes(orjson.dumps(latency, option=orjson.OPT_INDENT_2))
