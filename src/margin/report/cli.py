"""`margin report` views/formats/plots, `margin export focus` and `margin feedback import` (the commands in
margin.cli stay thin and call these)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from rich.console import Console

from margin.config import Settings
from margin.errors import InvalidRequest
from margin.report.queries import Window
from margin.userfiles import read_text

MAX_FEEDBACK_BYTES = 64 * 1024 * 1024


def run_report(
    console: Console,
    engine: sa.Engine,
    settings: Settings,
    window: Window,
    view: str | None,
    metric: str | None,
    by: str | None,
    fmt: str,
    bucket: str = "day",
    revenue: Path | None = None,
    plot_path: Path | None = None,
) -> None:
    from margin.report import views
    from margin.report.business import load_revenue_csv
    from margin.report.render import render_summary, render_view, view_csv

    if fmt not in ("table", "json", "csv"):
        raise InvalidRequest(f"--format must be table, json or csv, not {fmt!r}")
    if bucket not in ("hour", "day"):
        raise InvalidRequest(f"--bucket must be hour or day, not {bucket!r}")
    name = views.resolve(view, metric)
    lines = load_revenue_csv(revenue) if revenue is not None else ()
    options = views.Options(by, bucket, lines)  # type: ignore[arg-type]
    result = views.build(name, engine, window, settings, options)
    if plot_path is not None:
        from margin.report.metrics import savings, timeseries
        from margin.report.plot import plot

        plot(plot_path, timeseries(engine, window, options.bucket), savings(engine, window))
    if fmt == "json":
        data: Any = result.data if name == "summary" else result.to_json()
        print(orjson.dumps(data).decode())
    elif fmt == "csv":
        print(view_csv(result), end="")
    elif name == "summary":
        render_summary(console, result.data)
    else:
        render_view(console, result)


def import_feedback(engine: sa.Engine, path: Path) -> int:
    """Load a .jsonl or .csv of outcomes; all or nothing (admin rights: any request id)."""
    from margin.ledger import feedback

    text = read_text(path, "feedback file", MAX_FEEDBACK_BYTES)
    outcomes = feedback.read_file(path.name, text)
    feedback.record(engine, outcomes, None, admin=True)
    return len(outcomes)
