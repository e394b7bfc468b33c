"""Stacked bar charts as SVG geometry, computed here and drawn by the
template (``stats.html``): no chart library, nothing to load."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

WIDTH, HEIGHT, AXIS = 800.0, 150.0, 18.0
STATE_CLASS = {"done": "c-ok", "failed": "c-bad", "cancelled": "c-idle"}
PALETTE = ("c-1", "c-2", "c-3", "c-4", "c-5", "c-6")


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    cls: str
    title: str


@dataclass
class Chart:
    title: str
    unit: str
    top: float = 0.0
    bars: list[Bar] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)
    width: float = WIDTH
    height: float = HEIGHT
    axis: float = AXIS


def _label(t: int, bucket: int) -> str:
    at = datetime.fromtimestamp(t, UTC)
    return at.strftime("%m-%d" if bucket >= 86400 else "%H:%M")


def _fmt(value: float, unit: str) -> str:
    if unit == "$":
        return f"${value:.4f}" if value < 1 else f"${value:.2f}"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:g}"


def stacked(
    stats: dict[str, Any], *, value: str, title: str, unit: str, states: bool = False
) -> Chart:
    """Bars per bucket of ``stats`` (a ``GET /stats`` answer), one segment per
    series, of ``value`` (count, cost, or ``tokens``: input + output)."""
    bucket = int(stats["bucket"])
    first = int(stats["from"].timestamp()) // bucket
    last = max(first, (int(stats["to"].timestamp()) - 1) // bucket)
    slots = last - first + 1
    totals = [0.0] * slots
    chart = Chart(title, unit)
    keyed: list[tuple[str, str, dict[int, float]]] = []
    for i, s in enumerate(stats["series"]):
        cls = STATE_CLASS.get(s["key"], "c-idle") if states else PALETTE[i % len(PALETTE)]
        values: dict[int, float] = {}
        for p in s["points"]:
            v = p["input_tokens"] + p["output_tokens"] if value == "tokens" else p[value]
            slot = p["t"] // bucket - first
            if 0 <= slot < slots and v:
                values[slot] = float(v)
                totals[slot] += float(v)
        keyed.append((s["key"], cls, values))
        chart.legend.append((cls, s["key"]))
    chart.top = max(totals) if totals else 0.0
    if chart.top <= 0:
        return chart
    step = WIDTH / slots
    gap = min(2.0, step * 0.2)
    base = [HEIGHT] * slots
    for key, cls, values in keyed:
        for slot, v in sorted(values.items()):
            h = v / chart.top * (HEIGHT - 4)
            base[slot] -= h
            at = _label((first + slot) * bucket, bucket)
            chart.bars.append(
                Bar(
                    slot * step + gap / 2,
                    base[slot],
                    step - gap,
                    h,
                    cls,
                    f"{at} {key}: {_fmt(v, unit)}",
                )
            )
    every = max(1, slots // 8)
    chart.ticks = [
        (i * step + step / 2, _label((first + i) * bucket, bucket))
        for i in range(every // 2, slots, every)
    ]
    return chart
