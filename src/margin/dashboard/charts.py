"""Server-rendered inline SVG charts (no JavaScript, nothing fetched). Labels are escaped."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 720, 180, 64, 28, 10


def _label(bucket: str) -> str:
    """An ISO bucket start: `2026-11-26T08:00:00` → `08h`; a day (or midnight) `2026-11-26T00:00:00` → `11-26`."""
    return f"{bucket[11:13]}h" if len(bucket) > 13 and bucket[11:13] != "00" else bucket[5:10]


def bar_chart(title: str, points: Sequence[tuple[str, float, str]]) -> Markup:
    """A bar chart of (bucket, height, label) with the largest label on the axis. Heights are geometry only;
    labels carry the exact figures (money stays a decimal string)."""
    if not points:
        return Markup('<p class="empty">No data in this window.</p>')
    peak = max(points, key=lambda point: point[1])
    top, top_label = (peak[1], peak[2]) if peak[1] > 0 else (1.0, "0")
    plot_w, plot_h = WIDTH - PAD_LEFT - 8, HEIGHT - PAD_BOTTOM - PAD_TOP
    step = plot_w / len(points)
    bar_w = max(1.0, step * 0.8)
    every = max(1, len(points) // 12)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP + plot_h}" x2="{WIDTH - 8}" y2="{PAD_TOP + plot_h}" class="axis"/>',
        f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + 10}" class="tick" text-anchor="end">{escape(top_label)}</text>',
        f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + plot_h}" class="tick" text-anchor="end">0</text>',
    ]
    for i, (bucket, value, label) in enumerate(points):
        h = plot_h * (value / top) if top else 0.0
        x = PAD_LEFT + i * step + (step - bar_w) / 2
        parts.append(
            f'<rect x="{x:.1f}" y="{PAD_TOP + plot_h - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" class="bar">'
            f"<title>{escape(bucket)}: {escape(label)}</title></rect>"
        )
        if i % every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{HEIGHT - 8}" class="tick" text-anchor="middle">'
                f"{escape(_label(bucket))}</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def meter(pct: float | None) -> Markup:
    """A small horizontal gauge for a percentage (budget used, busy share). SVG geometry, not inline CSS, so
    the dashboard's Content-Security-Policy can forbid inline styles."""
    if pct is None:
        return Markup("")
    width = max(0.0, min(100.0, pct))
    level = "hot" if pct >= 90 else "warm" if pct >= 75 else "ok"
    return Markup(
        '<svg class="meter" viewBox="0 0 100 8" preserveAspectRatio="none" aria-hidden="true">'
        f'<rect width="100" height="8" class="track"/><rect width="{width:.1f}" height="8" class="fill {level}"/></svg>'
    )
