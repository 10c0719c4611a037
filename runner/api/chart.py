"""Small line charts drawn on the server as SVG: no JavaScript library, no build step, no CDN.

The machine that runs the daemon often has no internet access, and the dashboard must work in
any browser as it is; an inline SVG is plain markup the page carries itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["PALETTE", "Series", "downsample", "line_chart", "nice_ticks", "sparkline"]

PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#4b5563")
Point = tuple[float, float]


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[Point]
    color: str
    markers: bool = False  # eval points are few and far apart: show each one


def downsample(points: Sequence[Point], limit: int = 600) -> list[Point]:
    """At most `limit` points, evenly strided, always keeping the last one (the newest value)."""
    points = [p for p in points if math.isfinite(p[0]) and math.isfinite(p[1])]
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / limit)
    kept = points[::stride]
    if kept[-1] != points[-1]:
        kept.append(points[-1])
    return kept


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _label(value: float) -> str:
    return f"{value:.4g}"


def _span(values: Sequence[float], pad: float) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high == low:
        delta = abs(low) * 0.05 or 1.0
        return low - delta, high + delta
    margin = (high - low) * pad
    return low - margin, high + margin


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    width: int = 640,
    height: int = 260,
    x_label: str = "step",
    css_class: str = "chart",
) -> str:
    """An SVG chart of every series (x: step); an empty chart says that nothing is logged yet."""
    drawn = [Series(s.name, downsample(s.points), s.color, s.markers) for s in series]
    drawn = [s for s in drawn if s.points]
    left, right, top, bottom = 58, 14, 30, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{escape(css_class)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="18" font-size="13" font-weight="600" fill="#111827">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#ffffff" stroke="#d1d5db"/>',
    ]
    if not drawn:
        parts.append(
            f'<text class="chart-empty" x="{left + plot_w / 2}" y="{top + plot_h / 2}" font-size="12" '
            f'text-anchor="middle" fill="#6b7280">nothing logged yet</text></svg>'
        )
        return "".join(parts)
    xs = [p[0] for s in drawn for p in s.points]
    ys = [p[1] for s in drawn for p in s.points]
    x0, x1 = (min(xs), max(xs)) if max(xs) > min(xs) else (min(xs) - 1, max(xs) + 1)
    y0, y1 = _span(ys, 0.06)

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    for tick in nice_ticks(y0, y1):
        y = sy(tick)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#f1f5f9"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#4b5563">'
            f"{_label(tick)}</text>"
        )
    for tick in nice_ticks(x0, x1, 6):
        if float(tick).is_integer() or x1 - x0 < 6:
            x = sx(tick)
            parts.append(
                f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}" stroke="#9ca3af"/>'
                f'<text x="{x:.1f}" y="{top + plot_h + 16}" font-size="11" text-anchor="middle" '
                f'fill="#4b5563">{_label(tick)}</text>'
            )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 6}" font-size="11" text-anchor="middle" '
        f'fill="#4b5563">{escape(x_label)}</text>'
    )
    for s in drawn:
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.points)
        name = escape(s.name)
        if len(s.points) > 1:
            parts.append(
                f'<polyline class="series" data-series="{name}" data-points="{len(s.points)}" fill="none" '
                f'stroke="{s.color}" stroke-width="1.8" stroke-linejoin="round" points="{coords}"/>'
            )
        if s.markers or len(s.points) == 1:
            parts.extend(
                f'<circle class="marker" data-series="{name}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" '
                f'fill="{s.color}"><title>{name} {_label(y)} at {x_label} {_label(x)}</title></circle>'
                for x, y in s.points[-200:]
            )
    legend_x = left + plot_w - 8
    for i, s in enumerate(reversed(drawn)):
        y = top + 14 + 16 * (len(drawn) - 1 - i)
        last = s.points[-1][1]
        parts.append(
            f'<rect x="{legend_x - 150}" y="{y - 9}" width="10" height="10" fill="{s.color}"/>'
            f'<text x="{legend_x - 136}" y="{y}" font-size="11" fill="#111827">{escape(s.name)} '
            f"{_label(last)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def sparkline(points: Sequence[Point], *, width: int = 120, height: int = 28, color: str = PALETTE[0]) -> str:
    """A tiny loss curve for a table row; empty markup when there is nothing to draw."""
    pts = downsample(points, 120)
    if len(pts) < 2:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = _span(ys, 0.08)
    span_x = (x1 - x0) or 1.0
    coords = " ".join(
        f"{2 + (x - x0) / span_x * (width - 4):.1f},{height - 2 - (y - y0) / (y1 - y0) * (height - 4):.1f}"
        for x, y in pts
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="spark" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="loss curve"><polyline class="series" data-series="loss" '
        f'data-points="{len(pts)}" fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/></svg>'
    )
