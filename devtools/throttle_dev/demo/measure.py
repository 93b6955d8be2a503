"""The arithmetic behind the demo's report and the benchmarks: rates, windows, percentiles.

Pure functions over release timestamps, so the figures the demo prints are the ones its test
checks, and the accuracy benchmark judges the engine with the same definitions.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(text: str) -> float:
    """`3m`, `30s`, `1m30s`, `1h`, `250ms` or plain seconds (`90`) → seconds."""
    text = text.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds <= 0 or not math.isfinite(seconds):
            raise ValueError(f"{text!r} is not a positive duration")
        return seconds
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        value, unit = float(match.group(1)), match.group(2)
        total += value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
        pos = match.end()
    if pos != len(text) or total <= 0:
        raise ValueError(f"{text!r} is not a duration (use e.g. 30s, 3m, 1m30s)")
    return total


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def achieved_rate(
    times: Sequence[float], start: float, end: float, skip: int = 0
) -> tuple[float, int] | None:
    """Releases per second in [start, end], from the first release after `skip` to the last.

    `skip` drops the releases a policy's saved-up burst allows at once, so what is left is its
    sustained rate. Measured between releases (n-1 gaps over their span), not over the interval,
    so the answer does not depend on where sampling put the interval's edges. Returns
    (rate, releases used) or None when fewer than three releases remain.
    """
    ordered = sorted(times)
    lo = bisect.bisect_left(ordered, start)
    hi = bisect.bisect_right(ordered, end)
    inside = ordered[lo + skip : hi]
    if len(inside) < 3 or inside[-1] <= inside[0]:
        return None
    return (len(inside) - 1) / (inside[-1] - inside[0]), len(inside)


def max_in_window(times: Sequence[float], window: float) -> int:
    """The most releases inside any half-open window [t, t + window) — the rate's hard bound."""
    ordered = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def per_second(times: Sequence[float], origin: float, seconds: int) -> list[int]:
    """Counts per whole second since `origin` (the plot's bars)."""
    counts = [0] * max(seconds, 0)
    for t in times:
        index = int(t - origin)
        if 0 <= index < len(counts):
            counts[index] += 1
    return counts


def backlogged_span(samples: Sequence[tuple[float, int]]) -> tuple[float, float] | None:
    """The longest run of consecutive samples (time, queued) with queued > 0, as (start, end)."""
    best: tuple[float, float] | None = None
    run_start: float | None = None
    last = 0.0
    for t, queued in samples:
        if queued > 0:
            if run_start is None:
                run_start = t
            last = t
        elif run_start is not None:
            if best is None or last - run_start > best[1] - best[0]:
                best = (run_start, last)
            run_start = None
    if run_start is not None and (best is None or last - run_start > best[1] - best[0]):
        best = (run_start, last)
    return best


def relative_error(achieved: float, target: float) -> float:
    return abs(achieved - target) / target if target else 0.0
