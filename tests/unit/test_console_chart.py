"""The console's pure renderers: the SVG bar chart of daily requests, and the audit log's change summaries."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date, timedelta

from tenant_service.console.chart import usage_chart_svg

SVG = "{http://www.w3.org/2000/svg}"


def days(n: int) -> list[date]:
    start = date(2026, 11, 1)
    return [start + timedelta(days=i) for i in range(n)]


def test_one_bar_per_day_scaled_to_a_round_axis_top_with_labels_and_a_title() -> None:
    points = [(d, 100 * (i + 1), 10 * i) for i, d in enumerate(days(30))]
    svg = usage_chart_svg(points)
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img"
    assert root.find(f"{SVG}title").text == "Requests per day"
    assert "46500 requests, 4350 rejected" in root.find(f"{SVG}desc").text
    bars = root.findall(f".//{SVG}rect[@class='chart-bar']")
    rejected = root.findall(f".//{SVG}rect[@class='chart-bar-rejected']")
    assert len(bars) == len(rejected) == 30
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert "5k" in labels  # axis top: 3000 rounds up to 5000
    assert "0" in labels
    assert {"2026-11-01", "2026-11-16", "2026-11-30"} <= set(labels)
    # The tallest bar (3000 of 5000) is 60% of the plot; its rejected part sits on top of it.
    heights = [float(b.get("height")) + float(r.get("height")) for b, r in zip(bars, rejected, strict=True)]
    assert max(heights) == heights[-1]
    assert abs(max(heights) / (240 - 16 - 40) - 0.6) < 0.01
    assert "style=" not in svg
    assert "<script" not in svg


def test_every_text_is_escaped() -> None:
    svg = usage_chart_svg([(date(2026, 1, 1), 1, 0)], title="<script>alert(1)</script> & co")
    assert "<script>" not in svg
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in svg
    ET.fromstring(svg)


def test_no_points_and_odd_values() -> None:
    empty = usage_chart_svg([])
    assert "No requests recorded" in empty
    ET.fromstring(empty)
    odd = usage_chart_svg([(date(2026, 1, 1), -5, 9), (date(2026, 1, 2), 0, 0), (date(2026, 1, 3), 4, 99)])
    root = ET.fromstring(odd)
    heights = [float(r.get("height")) for r in root.iter(f"{SVG}rect")]
    assert all(h >= 0 for h in heights)


def test_audit_changes_are_summarised_field_by_field() -> None:
    from tenant_service.console.web import audit_change

    before = {"status": "active", "name": "A", "updated_at": "x", "limits": {"rpm": 1}}
    after = {"status": "suspended", "name": "A", "updated_at": "y", "limits": {"rpm": 2}, "note": "n" * 200}
    lines = audit_change(before, after)
    assert lines[0] == 'limits: {"rpm": 1} → {"rpm": 2}'
    assert lines[1].startswith("note: nnn")
    assert lines[1].endswith("…")
    assert len(lines[1]) < 100
    assert lines[2] == "status: active → suspended"
    assert len(lines) == 3
    assert audit_change(None, None) == []
    assert audit_change({"gone": 1}, None) == ["gone: 1 → (none)"]
