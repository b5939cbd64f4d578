"""The gateway sweep's figure: p50/p99 latency and success rate against the offered rate, one line per path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {
    "direct": "#555555",
    "bare": "#2ca02c",
    "margin": "#1f77b4",
    "margin_before": "#9ecae1",
    "litellm": "#d62728",
    "bare_w2": "#98df8a",  # lighter shades of their one-process paths
    "margin_w2": "#ff7f0e",
}
OTHERS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")  # paths without a colour of their own


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, success) = plt.subplots(1, 2, figsize=(12, 4.5))
    others = iter(OTHERS)
    for name, path in result["paths"].items():
        measured = [e for e in path["rates"] if e.get("p50_ms") is not None]
        rates = [e["offered_rps"] for e in measured]
        color = COLORS.get(name) or next(others, None)
        latency.plot(rates, [e["p50_ms"] for e in measured], "o--", color=color, label=f"{name} p50")
        latency.plot(rates, [e["p99_ms"] for e in measured], "s-", color=color, label=f"{name} p99")
        done = [e for e in path["rates"] if "success_pct" in e]
        success.plot([e["offered_rps"] for e in done], [e["success_pct"] for e in done], "o-", color=color, label=name)
    threshold = result["sustained_means"]["p99_ms_below"]
    latency.axhline(threshold, color="black", linewidth=0.8, linestyle=":", label=f"p99 {threshold:g} ms")
    for axis in (latency, success):
        axis.set_xscale("log")
        axis.set_xlabel("offered RPS (open loop)")
        axis.grid(True, which="both", alpha=0.3)
    latency.set_yscale("log")
    latency.set_ylabel("latency ms (client side)")
    latency.legend(fontsize=7, ncol=2)
    success.set_ylabel("success %")
    success.set_ylim(0, 105)
    success.legend(fontsize=8)
    sustained = ", ".join(f"{k} {v['max_sustained_rps']}" for k, v in result["paths"].items())
    mode = result.get("mode", "json")
    cores = result["machine"]["cpu_count"]
    fig.suptitle(f"gateway sweep, {mode} ({cores} cores shared): max sustained RPS {sustained}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
