"""Rich tables for `margin eval cache`."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _threshold(value: float | None) -> str:
    return "never" if value is None else f"{value:.4f}"


def cache_tables(report: dict[str, Any]) -> list[Table]:
    tables = []
    for split in report["splits"]:
        title = (
            f"Semantic cache, seed {split['seed']}: {split['test_queries']} test queries against "
            f"{split['test_entries']} entries (calibrated on {split['calibration_queries']})"
        )
        table = Table(title=title)
        for column in ("rule", "threshold", "hit rate", "false-hit rate", "precision", "meets δ", "vs best fixed"):
            table.add_column(column, justify="right")
        for row in split["calibrated"]:
            test, best = row["test"], row["best_fixed_meeting_delta"]
            versus = "no fixed meets δ" if best is None else f"{_pct(best['hit_rate'])} @ {best['threshold']:.2f}"
            table.add_row(
                f"δ = {_pct(row['delta'])}",
                _threshold(test["threshold"]),
                _pct(test["hit_rate"]),
                _pct(test["false_hit_rate"]),
                _pct(test["precision"]),
                "yes" if row["meets_delta"] else "NO",
                versus,
            )
        for fixed in split["fixed"]:
            table.add_row(
                "fixed",
                _threshold(fixed["threshold"]),
                _pct(fixed["hit_rate"]),
                _pct(fixed["false_hit_rate"]),
                _pct(fixed["precision"]),
                "",
                "",
            )
        tables.append(table)
    return tables
