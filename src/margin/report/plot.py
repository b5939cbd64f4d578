"""`margin report --plot out.png`: spend and $/1K tokens over time, and the savings waterfall (matplotlib,
which the `local` extra installs). Money is converted to float only here, for drawing."""

from __future__ import annotations

from pathlib import Path

from margin.errors import InvalidRequest
from margin.report.metrics import Savings, TimePoint
from margin.report.views import waterfall


def plot(path: Path, series: list[TimePoint], found: Savings) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib comes with the local extra
        raise InvalidRequest("--plot needs matplotlib (pip install 'margin[local]')") from exc
    figure, (spend, steps) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    starts = [point.start[:13] for point in series]
    spend.bar(starts, [float(point.cost_usd) for point in series], color="#4c78a8", label="spend $")
    spend.set_ylabel("spend (USD)")
    spend.set_title("spend and cost per 1K tokens")
    spend.tick_params(axis="x", rotation=45, labelsize=7)
    per_1k = spend.twinx()
    per_1k.plot(
        starts, [float(p.usd_per_1k_tokens) if p.usd_per_1k_tokens is not None else float("nan") for p in series],
        color="#f58518", marker="o", label="$/1K tokens",
    )  # fmt: skip
    per_1k.set_ylabel("USD per 1K tokens")
    labels, bottoms, heights, colors = [], [], [], []
    level = 0.0
    for label, amount in waterfall(found):
        value = float(amount)
        labels.append(label)
        if label in ("without levers", "actual"):
            bottoms.append(0.0)
            heights.append(value)
            colors.append("#4c78a8")
            level = value
        else:
            bottoms.append(level + value)
            heights.append(-value)
            colors.append("#54a24b")
            level += value
    steps.bar(labels, heights, bottom=bottoms, color=colors)
    unmeasured = " (quantization not measured)" if found.quantization_saved_usd is None else ""
    steps.set_title(f"savings waterfall{unmeasured}")
    steps.set_ylabel("USD")
    try:
        figure.savefig(path, dpi=110, format="png")  # PNG at exactly this path, whatever its suffix
    except OSError as exc:
        raise InvalidRequest(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        plt.close(figure)
