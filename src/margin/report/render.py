"""Terminal rendering of a report summary."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from margin.economics.money import human_usd
from margin.report.cells import spreadsheet_text
from margin.terminal import plain


def _sig(value: float) -> str:
    return f"{value:.3g}" if value else "0"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _row(label: str, figures: dict[str, Any]) -> list[str | Text]:
    cost = human_usd(figures["cost_usd"])
    if figures["unpriced_requests"]:
        cost += f" +{figures['unpriced_requests']} unpriced"
    requests = str(figures["requests"]) + (f" ({figures['errors']} err)" if figures["errors"] else "")
    return [
        plain(label),
        requests,
        f"{figures['input_tokens']}/{figures['output_tokens']}",
        cost,
        human_usd(figures["usd_per_1k_tokens"]),
        _sig(figures["energy_j"]),
        "-" if figures["energy_j_per_1k_tokens"] is None else _sig(figures["energy_j_per_1k_tokens"]),
        _sig(figures["co2e_g"]),
        f"{_ms(figures['latency_p50_ms'])}/{_ms(figures['latency_p95_ms'])}",
        _savings(figures),
    ]


def _savings(figures: dict[str, Any]) -> str:
    parts = []
    if figures["cache_hits"]:
        parts.append(f"cache {human_usd(figures['cache_saved_usd'])} ({figures['cache_hits']} hits)")
    if Decimal(figures["routing_saved_usd"]):
        parts.append(f"routing {human_usd(figures['routing_saved_usd'])}")
    return ", ".join(parts) or "-"


def render_summary(console: Console, summary: dict[str, Any]) -> None:
    window = f"{summary['since'] or 'start'} → {summary['until'] or 'now'}"
    table = Table(title=f"margin report ({window})", title_justify="left")
    table.add_column(summary["by"] or "", no_wrap=True, min_width=5)
    columns = ("requests", "tokens in/out", "cost", "$/1K tokens", "energy J", "J/1K tokens", "gCO2e", "ms p50/p95")
    for column in (*columns, "saved"):
        table.add_column(column, justify="right", no_wrap=True)
    for group in summary["groups"]:
        table.add_row(*_row(str(group["key"]), group))
    table.add_row(*_row("total", summary["totals"]), style="bold")
    wide = Console(width=max(console.width, 200), highlight=False, file=console.file)  # no figure cut to `…`
    wide.print(table)


def _cell(value: Any) -> str | Text:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return plain(value)


def render_view(console: Console, view: Any) -> None:
    """Any report view (margin.report.views.View) as a table; the overview as its parts."""
    data = view.to_json()
    window = f"{data.get('since') or 'start'} → {data.get('until') or 'now'}"
    # wide enough for every column's name in full (the carbon view's 13: its per-1K figures were cut to `…`)
    header = sum(len(column) + 3 for column in view.columns) + 1
    wide = Console(width=max(console.width, 160, header), highlight=False, file=console.file)
    if view.name == "overview":
        for part in ("totals", "savings", "tasks"):
            if data[part] is None:
                continue
            table = Table("figure", "value", title=f"{part} ({window})", title_justify="left")
            for name, value in data[part].items():
                table.add_row(name, _cell(value))
            wide.print(table)
        for part in ("utilization", "series"):
            if data[part]:
                columns = [c for c in data[part][0] if c != "assumption"]
                table = Table(*columns, title=part, title_justify="left")
                for item in data[part]:
                    table.add_row(*(_cell(item[c]) for c in columns))
                wide.print(table)
        return
    table = Table(*view.columns, title=f"margin report --view {view.name} ({window})", title_justify="left")
    for row in view.rows:
        table.add_row(*(_cell(value) for value in row))
    wide.print(table)
    if not view.rows:  # the header alone, then why (the other views show their zeros)
        wide.print(_nothing(view.name))
    if data.get("assumption"):
        wide.print(Text.assemble("assumption: ", plain(data["assumption"]), style="dim"))


def _nothing(view: str) -> str:
    if view == "utilization":
        return "no backend with `hardware:` in the config"
    return "no tasks in this window" if view == "tasks" else "no requests in this window"


def view_csv(view: Any) -> str:
    """The view's table as CSV (header + rows; the overview as its time series)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if view.name == "overview":
        series = view.to_json()["series"]
        writer.writerow(list(series[0]) if series else view.columns)
        writer.writerows([[spreadsheet_text(v) for v in point.values()] for point in series])
    else:
        writer.writerow(view.columns)
        writer.writerows([["" if v is None else spreadsheet_text(v) for v in row] for row in view.rows])
    return out.getvalue()
