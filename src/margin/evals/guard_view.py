"""Rich tables for `margin eval guard`."""

from __future__ import annotations

from rich.table import Table

from margin.evals.guard import PRECISION_TARGET, RECALL_TARGET, GuardReport


def guard_tables(report: GuardReport) -> list[Table]:
    """PII scores per entity, injection rates per family, and scanner speed."""
    pii = Table(title=f"PII detection (n={report.n}, seed={report.seed}; overlap matching)")
    for column in ("entity", "support", "predicted", "recall", "precision", "target"):
        pii.add_column(column, justify="left" if column == "entity" else "right")
    for score in report.entities.values():
        ok = "[green]ok[/]" if score.meets_target else "[red]MISS[/]"
        pii.add_row(
            score.entity, str(score.support), str(score.predicted), f"{score.recall:.3f}", f"{score.precision:.3f}", ok
        )
    pii.caption = f"targets: recall ≥ {RECALL_TARGET}, precision ≥ {PRECISION_TARGET}"

    inj = report.injection
    injection = Table(title=f"Prompt injection (heuristics): TPR {inj.tpr:.3f}, FPR {inj.fpr:.3f}")
    for column in ("family", "flagged", "total"):
        injection.add_column(column, justify="left" if column == "family" else "right")
    for family, (flagged, total) in inj.by_family.items():
        injection.add_row(family, str(flagged), str(total))

    speed = Table(title="Scanner speed (this machine)")
    speed.add_column("measure")
    speed.add_column("value", justify="right")
    speed.add_row("eval texts per second", f"{report.throughput.texts_per_s:,.0f}")
    speed.add_row("µs per 1 KB (eval texts, PII-dense)", f"{report.throughput.us_per_kb:,.0f}")
    for name, micros in report.latency_us.items():
        speed.add_row(f"µs per call, {name}", f"{micros:,.1f}")
    return [pii, injection, speed]
