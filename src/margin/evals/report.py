"""`margin eval report RUN`: a markdown table, the same as HTML, and a Pareto PNG (quality vs $ per
successful task, frontier marked) from a run's results."""

from __future__ import annotations

import html
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

COLUMNS = (
    "variant",
    "quant",
    "score [95% CI]",
    "pass",
    "$/item",
    "$/success",
    "out tok/item",
    "TTFT p50/p95 ms",
    "E2E p50/p95 ms",
    "decode tok/s",
    "J/item",
    "gCO2e/item",
    "vs baseline",
)


def _pct(interval: dict[str, Any]) -> str:
    return f"{100 * interval['value']:.1f}% [{100 * interval['low']:.1f}, {100 * interval['high']:.1f}]"


def _usd(value: str | None) -> str:
    return "unknown" if value is None else f"{Decimal(value):.3e}"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _sci(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _versus(results: dict[str, Any], name: str) -> str:
    comparison = results["comparisons"].get(name)
    if comparison is None:
        return "baseline" if name == results["baseline"] else "-"
    diff = comparison["diff"]
    return (
        f"{100 * diff['value']:+.1f} pp [{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}], "
        f"McNemar p={comparison['mcnemar_p']:.2g} ({comparison['verdict']})"
    )


def rows(results: dict[str, Any]) -> list[list[str]]:
    out = []
    for v in results["variants"]:
        lat = v["latency_ms"]
        frontier = " ★" if v["variant"] in results["pareto_frontier"] else ""
        out.append(
            [
                v["variant"] + frontier,
                v["quantization"] or "-",
                _pct(v["score"]),
                f"{v['successes']}/{v['n']}",
                _usd(v["cost"]["per_item_usd"]),
                _usd(v["cost"]["per_success_usd"]),
                _num(v["tokens"]["output_per_item"]),
                f"{_num(lat['ttft']['p50'], 0)}/{_num(lat['ttft']['p95'], 0)}",
                f"{_num(lat['e2e']['p50'], 0)}/{_num(lat['e2e']['p95'], 0)}",
                _num(v["decode_tokens_per_s"]),
                _sci(v["energy_j_per_item"]),
                _sci(v["co2e_g_per_item"]),
                _versus(results, v["variant"]),
            ]
        )
    return out


def notes(results: dict[str, Any], extra: list[str] | None = None) -> list[str]:
    out = [
        f"Suite `{results['suite']}`, {results['items']} items, seed {results['seed']}, "
        f"baseline `{results['baseline']}`. ★ = on the Pareto frontier (score vs $ per successful task).",
        "Score intervals: percentile bootstrap (2000 resamples, seeded). vs baseline: paired bootstrap of the "
        "per-item difference over the same items, and McNemar's exact test on pass/fail.",
    ]
    out += failures(results)
    sources = {v["cost"]["source"] for v in results["variants"]}
    out.append(f"Cost source: {', '.join(sorted(sources))} (gateway = x-margin-cost-usd, the ledger's price).")
    judge = results.get("judge")
    if judge:
        warning = (
            " **This judge is a small model: its ratings are not trustworthy and say little about quality.**"
            if judge["untrustworthy"]
            else ""
        )
        out.append(f"Judge: `{judge['model']}` (MT-Bench single-answer prompts).{warning}")
    host = (results.get("run") or {}).get("host") or {}
    if host.get("loadavg_start"):
        start = ", ".join(f"{x:.2f}" for x in host["loadavg_start"])
        end = ", ".join(f"{x:.2f}" for x in host.get("loadavg_end") or [])
        out.append(f"Host: {host.get('platform')}, {host.get('cpus')} CPUs; load average at start {start}, end {end}.")
    return out + (extra or [])


def failures(results: dict[str, Any]) -> list[str]:
    """A note per variant whose requests failed (a target that is down, a model it does not serve): they are
    graded 0, so without it a run of nothing but errors read as a model that scores 0 %."""
    return [
        f"**`{v['variant']}`: {v['errors']} of {v['n']} requests failed** and score 0 "
        f"(first: {v.get('first_error') or 'unknown'})."
        for v in results["variants"]
        if v.get("errors")
    ]


def markdown(results: dict[str, Any], extra: list[str] | None = None) -> str:
    lines = [f"# eval: {results['experiment']}", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows(results)]
    lines += ["", *[f"- {note}" for note in notes(results, extra)], ""]
    return "\n".join(lines)


def html_page(results: dict[str, Any], plot_name: str | None, extra: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows(results))
    items = "".join(f"<li>{html.escape(n).replace('**', '')}</li>" for n in notes(results, extra))
    image = f'<p><img src="{html.escape(plot_name)}" alt="Pareto plot"></p>' if plot_name else ""
    style = "table{border-collapse:collapse;font:13px sans-serif}td,th{border:1px solid #ccc;padding:4px 8px}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>eval {html.escape(results['experiment'])}</title>"
        f"<style>{style}</style></head><body><h1>eval: {html.escape(results['experiment'])}</h1>"
        f"<table><tr>{head}</tr>{body}</table><ul>{items}</ul>{image}</body></html>\n"
    )


def pareto_png(results: dict[str, Any], path: Path) -> bool:
    """Score (with its interval) vs $ per successful task; the frontier joined by a line. False when no
    variant has a known cost (nothing to plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    known = [v for v in results["variants"] if v["cost"]["per_success_usd"] is not None]
    if not known:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    frontier = set(results["pareto_frontier"])
    for v in known:
        x, s = float(v["cost"]["per_success_usd"]), v["score"]
        y, err = 100 * s["value"], [[100 * (s["value"] - s["low"])], [100 * (s["high"] - s["value"])]]
        on = v["variant"] in frontier
        ax.errorbar([x], [y], yerr=err, fmt="o" if on else "s", color="C0" if on else "C7", capsize=3)
        ax.annotate(v["variant"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    line = sorted(
        (float(v["cost"]["per_success_usd"]), 100 * v["score"]["value"]) for v in known if v["variant"] in frontier
    )
    if line:
        ax.plot([p[0] for p in line], [p[1] for p in line], "--", color="C0", label="Pareto frontier")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("$ per successful task")
    ax.set_ylabel("score, % (95% bootstrap CI)")
    ax.set_title(f"{results['experiment']}: quality vs cost ({results['suite']})", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def perplexity_lines(ppl: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """A markdown table of perplexity / KL per variant, joined to the run by quantization name."""
    by_quant = {(v["quantization"] or "").upper(): v for v in results["variants"]}
    lines = [
        "",
        f"## Perplexity and KL vs {ppl['reference']} ({ppl['tokens_scored']} tokens of {ppl['corpus']['source']}, "
        f"{ppl['corpus']['windows']} windows of {ppl['corpus']['ctx']})",
        "",
        "| model | perplexity [95% CI] | KL vs reference (nats/token) | top-1 agreement | MB | load s | score |",
        "|---|---|---|---|---|---|---|",
    ]
    files = {f["name"]: f for f in (ppl.get("files") or [])}
    for name, m in ppl["models"].items():
        low, high = m["perplexity_ci"]
        size = files.get(name, {})
        mb = f"{size['bytes'] / 1e6:.1f}" if size.get("bytes") else "-"
        load = f"{size['load_s']:.2f}" if size.get("load_s") is not None else "-"
        variant = by_quant.get(name.upper())
        score = _pct(variant["score"]) if variant else "-"
        lines.append(
            f"| {name} | {m['perplexity']:.3f} [{low:.3f}, {high:.3f}] | {m['kl']:.5f} | {m['top1_agreement']:.3f} "
            f"| {mb} | {load} | {score} |"
        )
    return lines


def write_report(results: dict[str, Any], out_dir: Path, extra: list[str] | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "pareto.png"
    plotted = pareto_png(results, png)
    md, page = out_dir / "report.md", out_dir / "report.html"
    text = markdown(results, extra)
    ppl_path = out_dir / "perplexity.json"
    if ppl_path.is_file():
        ppl = json.loads(ppl_path.read_text(encoding="utf-8"))
        models = out_dir / "models.json"
        if models.is_file():
            ppl["files"] = json.loads(models.read_text(encoding="utf-8")).get("variants", [])
        text += "\n".join(perplexity_lines(ppl, results)) + "\n"
    md.write_text(text + ("\n![Pareto plot](pareto.png)\n" if plotted else ""), encoding="utf-8")
    page.write_text(html_page(results, png.name if plotted else None, extra), encoding="utf-8")
    return [md, page, *([png] if plotted else [])]
