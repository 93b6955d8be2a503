"""The queue page's bar chart (releases per minute over the last hour), laid out server-side.

The template draws the SVG from these numbers: no script, nothing to build, and a screen reader
gets the same data from the table beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

WIDTH = 720
HEIGHT = 220
LEFT = 48  # room for the y axis' labels
BOTTOM = 28  # room for the x axis' labels
TOP = 10


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    minute: datetime
    count: int


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    baseline: float
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    total: int
    peak: int


def _nice_ceiling(value: int) -> int:
    """The axis' top: 1, 2 or 5 times a power of ten, at least `value` (and at least 1)."""
    if value <= 1:
        return 1
    power = int(10 ** math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def releases_chart(points: list[tuple[datetime, int]]) -> Chart:
    top = _nice_ceiling(max((n for _, n in points), default=0))
    plot_w = WIDTH - LEFT - 8
    plot_h = HEIGHT - TOP - BOTTOM
    baseline = TOP + plot_h
    slot = plot_w / max(len(points), 1)
    bars = []
    for i, (minute, n) in enumerate(points):
        h = plot_h * n / top
        bars.append(Bar(LEFT + i * slot + 1, baseline - h, max(slot - 2, 1), h, minute, n))
    y_ticks = [Tick(baseline - plot_h * f, f"{round(top * f):,}") for f in (0, 0.5, 1)]
    x_ticks = [
        Tick(LEFT + i * slot + slot / 2, minute.strftime("%H:%M"))
        for i, (minute, _) in enumerate(points)
        if i % 10 == 0 or i == len(points) - 1
    ]
    return Chart(
        WIDTH,
        HEIGHT,
        LEFT,
        baseline,
        bars,
        y_ticks,
        x_ticks,
        sum(n for _, n in points),
        max((n for _, n in points), default=0),
    )
