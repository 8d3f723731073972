"""A server-side SVG bar chart of a tenant's daily requests (and how many of them were rejected).

A pure function: no JavaScript, no inline style (colours come from CSS classes of the console's stylesheet, so the
Content-Security-Policy ``style-src 'self'`` holds); every text is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from html import escape

WIDTH = 720
HEIGHT = 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 16, 40


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _compact(count: int) -> str:
    for limit, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if count >= limit:
            return _num(count / limit) + suffix
    return str(count)


def _nice_max(peak: int) -> int:
    """The axis top: a round number at or above ``peak`` (1, 2 or 5 times a power of ten), at least 10 so that
    the middle label is a whole number."""
    scale = 10
    if peak <= scale:
        return scale
    while True:
        for step in (1, 2, 5):
            if step * scale >= peak:
                return step * scale
        scale *= 10


def usage_chart_svg(points: Sequence[tuple[date, int, int]], *, title: str = "Requests per day") -> str:
    """SVG markup of one bar per point: ``(day, requests, rejected)``, the rejected part drawn on top of the
    accepted part. Has a ``<title>`` and ``<desc>`` for screen readers, a y axis with its top and middle values and
    x labels for the first, middle and last days."""
    plot_w = WIDTH - _LEFT - _RIGHT
    plot_h = HEIGHT - _TOP - _BOTTOM
    top = _nice_max(max((max(r, 0) for _, r, _ in points), default=0))
    total = sum(max(r, 0) for _, r, _ in points)
    rejected_total = sum(max(x, 0) for _, _, x in points)
    desc = (
        f"{len(points)} days from {points[0][0].isoformat()} to {points[-1][0].isoformat()}: "
        f"{total} requests, {rejected_total} rejected"
        if points
        else "No requests recorded"
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-labelledby="chart-title chart-desc">',
        f'<title id="chart-title">{escape(title)}</title>',
        f'<desc id="chart-desc">{escape(desc)}</desc>',
        f'<line class="chart-axis" x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_LEFT + plot_w}" y2="{_TOP + plot_h}"/>',
        f'<line class="chart-axis" x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + plot_h}"/>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = _TOP + plot_h - plot_h * fraction
        label = _compact(round(top * fraction))
        parts.append(
            f'<text class="chart-label" x="{_LEFT - 6}" y="{_num(y + 4)}" text-anchor="end">{escape(label)}</text>'
        )
        if fraction:
            parts.append(f'<line class="chart-grid" x1="{_LEFT}" y1="{_num(y)}" x2="{_LEFT + plot_w}" y2="{_num(y)}"/>')
    if points:
        slot = plot_w / len(points)
        bar = max(slot * 0.7, 1.0)
        for i, (day, raw_requests, raw_rejected) in enumerate(points):
            requests = max(raw_requests, 0)
            rejected = min(max(raw_rejected, 0), requests)
            x = _LEFT + i * slot + (slot - bar) / 2
            h_all = plot_h * requests / top
            h_rej = plot_h * rejected / top
            base = _TOP + plot_h
            label = escape(f"{day.isoformat()}: {requests} requests, {rejected} rejected")
            parts.append(
                f'<g><title>{label}</title><rect class="chart-bar" x="{_num(x)}" y="{_num(base - h_all)}" '
                f'width="{_num(bar)}" height="{_num(h_all - h_rej)}"/>'
                f'<rect class="chart-bar-rejected" x="{_num(x)}" y="{_num(base - h_all)}" width="{_num(bar)}" '
                f'height="{_num(h_rej)}"/></g>'
            )
        last = len(points) - 1
        for i in sorted({0, len(points) // 2, last}):
            # The first and last labels align with the plot's edges, so that neither is cut off by the frame.
            anchor, x = "middle", _LEFT + i * slot + slot / 2
            if i == last and last:
                anchor, x = "end", _LEFT + plot_w
            elif i == 0 and last:
                anchor, x = "start", _LEFT
            parts.append(
                f'<text class="chart-label" x="{_num(x)}" y="{HEIGHT - _BOTTOM + 18}" text-anchor="{anchor}">'
                f"{escape(points[i][0].isoformat())}</text>"
            )
    else:
        parts.append(
            f'<text class="chart-label" x="{_LEFT + plot_w / 2}" y="{_TOP + plot_h / 2}" text-anchor="middle">'
            "No requests recorded</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
