"""PNG plots of a bench result: latency CDFs per load point, and throughput / p99 latency against the
offered load when there are several points (matplotlib, headless)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from margin.errors import InvalidRequest

CDF_METRICS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E latency"))


def _values_ms(run: dict[str, Any], name: str) -> list[float]:
    out: list[float] = []
    for r in run["requests"]:
        if not r["ok"]:
            continue
        chunks, sent, end = r["chunk_s"], r["sent_s"], r["end_s"]
        if name == "ttft" and chunks:
            out.append((chunks[0] - sent) * 1000)
        elif name == "e2el" and end is not None:
            out.append((end - sent) * 1000)
        elif name == "itl":
            out.extend((b - a) * 1000 for a, b in itertools.pairwise(chunks))
        elif name == "tpot" and chunks and end is not None and r["output_tokens"] >= 2:
            out.append((end - chunks[0]) * 1000 / (r["output_tokens"] - 1))
    return sorted(out)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise InvalidRequest("plots need matplotlib (pip install 'margin[local]')") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(result: dict[str, Any], directory: Path) -> list[Path]:
    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "latency_cdf.png"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (name, title) in zip(axes.flat, CDF_METRICS, strict=True):
        for run in result["runs"]:
            values = _values_ms(run, name)
            if values:
                ys = [(i + 1) / len(values) for i in range(len(values))]
                ax.step(values, ys, where="post", label=run["load"]["label"])
        ax.set_title(f"{title} CDF")
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests" if name != "itl" else "fraction of gaps")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"margin bench: {result['model']['name']} at {result['config']['base_url']}")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)
    if len(result["runs"]) > 1:
        paths.append(_sweep(plt, result, directory / "sweep.png"))
    return paths


def _offered(run: dict[str, Any]) -> tuple[float, str]:
    load = run["load"]
    if load["concurrency"] is not None:
        return float(load["concurrency"]), "concurrency (requests in flight)"
    return float(load["rate"]), "offered rate (requests/s)"


def _sweep(plt: Any, result: dict[str, Any], path: Path) -> Path:
    runs = result["runs"]
    xs = [_offered(r)[0] for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.plot(xs, [r["metrics"]["output_throughput"] for r in runs], "o-", label="output tok/s")
    left.plot(xs, [r["metrics"]["total_token_throughput"] for r in runs], "s--", label="total tok/s")
    left.set_ylabel("tokens/s")
    twin = left.twinx()
    twin.plot(xs, [r["metrics"]["request_throughput"] for r in runs], "^:", color="gray", label="requests/s")
    twin.set_ylabel("requests/s")
    left.legend(loc="upper left", fontsize=8)
    left.set_title("throughput")
    for name in ("ttft", "tpot", "e2el"):
        right.plot(xs, [r["metrics"][f"{name}_ms"]["p99"] for r in runs], "o-", label=f"p99 {name.upper()}")
    right.set_yscale("log")
    right.set_ylabel("ms")
    right.set_title("p99 latency")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.set_xlabel(_offered(runs[0])[1])
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
