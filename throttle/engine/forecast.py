"""When a queue will have drained, and how much fits before executions expire: an estimate.

The releases themselves are decided in Redis (`lua/take.lua`); this is the same rate arithmetic
in Python — one release per emission interval, only inside schedule windows, at most the daily
cap per local day — for the questions asked outside Redis: the webhook's overflow decision (how
deep may a queue get before its executions could not be released within the expiration), the
operator's and `throttle status`' projected drain time. An estimate: it assumes a dispatcher
takes each release on time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from zoneinfo import ZoneInfo

from throttle.engine.calendars import local_day, local_midnight_after, window_spans
from throttle.engine.policy import Policy


def open_segments(policy: Policy, start: float, end: float) -> Iterator[tuple[float, float, int]]:
    """Intervals in [start, end) where releases may happen, each with its cap-day number.

    Windows are cut at the daily cap's local midnights, so each segment belongs to one cap
    day (`-1` when there is no cap).
    """
    spans: list[tuple[float, float]]
    if policy.schedule is None:
        spans = [(start, end)]
    else:
        spans = list(window_spans(policy.schedule, start, end))
    for a, b in spans:
        if policy.daily_cap is None:
            yield a, b, -1
            continue
        zone = ZoneInfo(policy.daily_cap.time_zone)
        while a < b:
            day = local_day(zone, a)
            midnight = local_midnight_after(zone, a)
            yield a, min(b, midnight), day
            a = min(b, midnight)


def projected_wait(
    policy: Policy, position: int, now: float, first_at: float | None = None, cap_used: int = 0
) -> float:
    """Seconds until the item at 1-based `position` of a queue is likely released.

    Items leave one per emission interval from `first_at` (when the rate lets the queue's head
    go), only inside schedule windows, at most the daily cap per local day (`cap_used` of
    today's already gone). `inf` if it would not happen within twice the expiration.
    """
    if policy.paused:
        return math.inf
    interval = policy.rate.emission_interval
    start = max(now, first_at or now)
    if policy.schedule is None and policy.daily_cap is None:
        return start - now + max(0, position - 1) * interval
    horizon = start + 2 * policy.expiration.total_seconds()
    cap = policy.daily_cap.limit if policy.daily_cap else None
    remaining = position
    tat = start
    used: dict[int, int] = {}
    first_day: int | None = None
    for a, b, day in open_segments(policy, start, horizon):
        if first_day is None:
            first_day = day
            used[day] = cap_used
        t0 = max(a, tat)
        if t0 >= b:
            continue
        n = math.floor((b - t0) / interval - 1e-9) + 1
        if cap is not None:
            n = min(n, cap - used.get(day, 0))
            if n <= 0:
                continue
        if n >= remaining:
            return t0 + (remaining - 1) * interval - now
        remaining -= n
        used[day] = used.get(day, 0) + n
        tat = t0 + n * interval
    return math.inf


def capacity_within(policy: Policy, now: float, seconds: float | None = None) -> int:
    """About how many items could be released from `now` within `seconds` (default: the
    expiration), counting the burst once after each closed spell."""
    if policy.paused:
        return 0
    horizon = now + (seconds if seconds is not None else policy.expiration.total_seconds())
    interval = policy.rate.emission_interval
    cap = policy.daily_cap.limit if policy.daily_cap else None
    per_day: dict[int, int] = {}
    prev_end = None
    for a, b, day in open_segments(policy, now, horizon):
        n = math.floor((b - a) / interval)
        if prev_end is None or a > prev_end:
            n += 1 + policy.rate.burst
        prev_end = b
        per_day[day] = per_day.get(day, 0) + n
    if cap is not None:
        return sum(min(cap, n) for n in per_day.values())
    return sum(per_day.values())
