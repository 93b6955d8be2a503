"""Wall clocks in IANA time zones: offsets and their changes, local days, weekly windows.

A policy's daily cap resets at local midnight and its schedule opens on the local wall clock, so
both move with daylight saving time. The Lua scripts cannot read the zone database: they get an
offset table built here (`transitions`) and do the same arithmetic as this module
(`lua/_lib.lua`: `tz_offset`, `local_day_minute`, `in_window`), so Python's estimates and the
scripts' releases agree on what a day or a window is. Times are UTC epoch seconds (floats);
days are counted from 1970-01-01 in local time; weekdays run Monday = 0 to Sunday = 6.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class WallClockWindow(Protocol):
    """Open on these weekdays from `start_minute` to `end_minute` of the local day."""

    @property
    def weekdays(self) -> list[int]: ...

    @property
    def start_minute(self) -> int: ...

    @property
    def end_minute(self) -> int: ...


class WeeklySchedule(Protocol):
    """Windows on the wall clock of one zone (the policy model's `Schedule`)."""

    @property
    def time_zone(self) -> str: ...

    @property
    def windows(self) -> Sequence[WallClockWindow]: ...


def weekday_index(name: str) -> int | None:
    """Monday = 0 for `Mon`, `monday`, `MONDAY`...; None if `name` is no weekday."""
    text = name.strip().lower()
    for index, (short, full) in enumerate(zip(DAYS, _FULL_DAYS, strict=True)):
        if text in (short.lower(), full):
            return index
    return None


def check_zone(value: str) -> str:
    """`value` if it names an IANA zone, else a ValueError saying what is expected."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone (e.g. America/New_York)") from None
    return value


def utc_offset(zone: ZoneInfo, t: float) -> int:
    """Seconds the zone's wall clock is ahead of UTC at instant `t`."""
    delta = datetime.fromtimestamp(t, UTC).astimezone(zone).utcoffset()
    return int(delta.total_seconds()) if delta else 0


@lru_cache(maxsize=256)
def transitions(zone_name: str, start: int, end: int) -> tuple[tuple[int, int], ...]:
    """(utc second, offset seconds) from `start`, then at every change of offset up to `end`.

    Cached: every policy write asks for the same few zones over the same day-aligned span."""
    zone = ZoneInfo(zone_name)
    out = [(start, utc_offset(zone, start))]
    t = start
    step = 6 * 3600
    while t < end:
        nxt = min(t + step, end)
        if utc_offset(zone, nxt) != out[-1][1]:
            lo, hi = t, nxt  # offset at lo == current, at hi differs
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if utc_offset(zone, mid) == out[-1][1]:
                    lo = mid
                else:
                    hi = mid
            out.append((hi, utc_offset(zone, hi)))
        t = nxt
    return tuple(out)


def local_day(zone: ZoneInfo, t: float) -> int:
    """Days since 1970-01-01 of the local date at instant `t`."""
    return math.floor((t + utc_offset(zone, t)) / 86400)


def local_midnight_after(zone: ZoneInfo, t: float) -> float:
    """The instant the local date after the one at `t` begins (a daily cap's reset)."""
    day = local_day(zone, t) + 1
    naive = datetime(1970, 1, 1) + timedelta(days=day)
    return naive.replace(tzinfo=zone).timestamp()


def in_window(schedule: WeeklySchedule, t: float) -> bool:
    """Whether instant `t` falls in a window, judged by the local wall clock at `t`."""
    zone = ZoneInfo(schedule.time_zone)
    local = t + utc_offset(zone, t)
    day = math.floor(local / 86400)
    minute = (local - day * 86400) / 60
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    return any(
        weekday in w.weekdays and w.start_minute <= minute < w.end_minute for w in schedule.windows
    )


@lru_cache(maxsize=16384)
def _day_spans(
    time_zone: str, windows: tuple[tuple[frozenset[int], int, int], ...], day: int
) -> tuple[tuple[float, float], ...]:
    """One local day's windows as UTC [a, b) instants, sorted and apart: the same for every
    policy with this schedule, every time the forecast walks past that day (`throttle status`
    and the console ask it for a thousand queues at a time), so computed once.

    Made from the zone's offset pieces, the way `in_window` reads the clock (the offset at the
    instant itself): a window ending in the hour clocks skip closes when they jump, and one
    covering the hour clocks repeat is open through both passes of it, not across the gap
    between them.
    """
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    local_minutes = [(a, b) for weekdays, a, b in windows if weekday in weekdays]
    if not local_minutes:
        return ()
    midnight = day * 86400  # the day's start in local seconds
    # Every instant whose local date is `day` lies within a day of its local midnight.
    pieces = transitions(time_zone, midnight - 86400, midnight + 2 * 86400)
    bounds = [float(t) for t, _ in pieces[1:]] + [float(midnight + 2 * 86400)]
    spans: list[tuple[float, float]] = []
    for (piece_start, offset), piece_end in zip(pieces, bounds, strict=True):
        for start_minute, end_minute in local_minutes:
            lo = max(float(midnight + start_minute * 60 - offset), piece_start)
            hi = min(float(midnight + end_minute * 60 - offset), piece_end)
            if lo < hi:
                spans.append((lo, hi))
    merged: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return tuple(merged)


def window_spans(
    schedule: WeeklySchedule, start: float, end: float
) -> Iterator[tuple[float, float]]:
    """Merged [a, b) UTC intervals inside `start`..`end` where the schedule is open, in order,
    made one local day at a time: a caller that stops at the first spans it needs (the forecast,
    for a queue that drains today) never builds the rest of the horizon.

    Built from local wall-clock windows, so a window crossing a DST change is an hour shorter
    or longer in real time, exactly as the Lua membership test sees it.
    """
    zone = ZoneInfo(schedule.time_zone)
    first = local_day(zone, start) - 1
    last = local_day(zone, end) + 1
    windows = tuple((frozenset(w.weekdays), w.start_minute, w.end_minute) for w in schedule.windows)
    current: tuple[float, float] | None = None
    for day in range(first, last + 1):
        spans = [
            (max(a, start), min(b, end))
            for a, b in _day_spans(schedule.time_zone, windows, day)
            if a < end and b > start
        ]
        # A day's windows start within that day, so every span of a later day starts after
        # every start of this one: merging in this order is merging the sorted whole.
        for a, b in spans:
            if current is not None and a <= current[1]:
                current = (current[0], max(current[1], b))
                continue
            if current is not None:
                yield current
            current = (a, b)
    if current is not None:
        yield current
