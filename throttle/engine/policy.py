"""The throttle policy: one validated type for the CRD spec, the config API body and Redis.

Pure: no I/O. Besides validation it holds the calendar arithmetic the engine needs outside Redis
(time-zone offset tables handed to the Lua scripts, release windows, projected waits), so the
scripts and the webhook agree on what a schedule or a daily cap means. Times are UTC epoch
seconds (floats) unless a name says otherwise.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

GLOBAL_PORTAL = 0
"""`portalId` of the global default policy, which applies to any portal without its own."""

DEFAULT_POLICY_NAME = "default"
"""A portal's default policy is its policy with this name (the global default too)."""

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_ALIASES = {d.lower(): i for i, d in enumerate(DAYS)} | {
    full: i
    for i, full in enumerate(
        ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    )
}

_ISO = re.compile(
    r"^P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
_SHORT = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SHORT_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")


def parse_duration(value: Any) -> timedelta:
    """Accept ISO-8601 (`PT1M`, `P7D`), short forms (`10s`, `1m`, `1h30m`) or seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a duration such as PT1M, P7D, 10s or 1m")
    text = value.strip()
    match = _ISO.match(text.upper())
    if match and text.upper() not in ("P", "PT") and not text.upper().endswith("T"):
        parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
        return timedelta(
            weeks=parts["w"],
            days=parts["d"],
            hours=parts["h"],
            minutes=parts["m"],
            seconds=parts["s"],
        )
    pieces = _SHORT.findall(text.lower())
    if pieces and "".join(n + u for n, u in pieces) == text.lower():
        return timedelta(seconds=sum(float(n) * _SHORT_UNITS[u] for n, u in pieces))
    raise ValueError(f"{text!r} is not a duration (use ISO-8601 like PT1M or P7D, or 10s, 1m, 2h)")


def format_duration(value: timedelta) -> str:
    """ISO-8601 in the forms HubSpot documents: `PnD` for whole days, else `PTnHnMnS`."""
    total = value.total_seconds()
    if total > 0 and total % 86400 == 0:
        return f"P{int(total // 86400)}D"
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    out = "PT"
    if hours:
        out += f"{int(hours)}H"
    if minutes:
        out += f"{int(minutes)}M"
    if seconds or out == "PT":
        out += f"{seconds:g}S"
    return out


Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]


def _check_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone (e.g. America/New_York)") from None
    return value


class _Spec(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Rate(_Spec):
    """`limit` releases per `period`, plus `burst` extra allowed at once after an idle spell.

    No window of one `period` ever holds more than `limit + burst` releases. `burst` also
    absorbs dispatcher timing jitter: with `burst: 0` a release taken δ late moves the whole
    schedule by δ (the bound leaves no room to catch up), costing δ/(period/limit) of the rate,
    about 2% at 20/s on a loaded 2-core machine; `burst: 1` or more removes that loss.
    """

    limit: int = Field(ge=1, le=1_000_000)
    period: Duration = Field(default=timedelta(minutes=1))
    burst: int = Field(default=0, ge=0, le=1_000_000)

    @field_validator("period")
    @classmethod
    def _period(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(days=31):
            raise ValueError("must be between 1 second and 31 days")
        return value

    @property
    def emission_interval(self) -> float:
        """Seconds between two releases at the steady rate (GCRA's T)."""
        return self.period.total_seconds() / self.limit


class DailyCap(_Spec):
    """At most `limit` releases per calendar day in `time_zone` (resets at local midnight)."""

    limit: int = Field(ge=1, le=100_000_000)
    time_zone: str = "UTC"

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _check_zone(value)


class Window(_Spec):
    """Release only on these weekdays between `start` and `end` (local wall clock, HH:MM)."""

    days: list[str] = Field(min_length=1)
    start: str
    end: str

    @field_validator("days")
    @classmethod
    def _days(cls, value: list[str]) -> list[str]:
        out = []
        for day in value:
            index = _DAY_ALIASES.get(str(day).strip().lower())
            if index is None:
                raise ValueError(f"{day!r} is not a weekday (Mon, Tue, Wed, Thu, Fri, Sat, Sun)")
            if DAYS[index] not in out:
                out.append(DAYS[index])
        return out

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK.match(value):
            raise ValueError(f"{value!r} is not a time of day HH:MM (00:00 to 24:00)")
        return value

    @model_validator(mode="after")
    def _order(self) -> Window:
        if self.end_minute <= self.start_minute:
            raise ValueError("end must be after start (split a window across midnight in two)")
        return self

    @property
    def start_minute(self) -> int:
        hours, minutes = self.start.split(":")
        return int(hours) * 60 + int(minutes)

    @property
    def end_minute(self) -> int:
        hours, minutes = self.end.split(":")
        return int(hours) * 60 + int(minutes)

    @property
    def weekdays(self) -> list[int]:
        return [DAYS.index(d) for d in self.days]


class Schedule(_Spec):
    """Release windows in one time zone; outside every window nothing is released."""

    time_zone: str = "UTC"
    windows: list[Window] = Field(min_length=1, max_length=50)

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _check_zone(value)


class Policy(_Spec):
    """One throttle: which executions it holds and how fast it lets them go."""

    name: str = Field(min_length=1, max_length=63)
    portal_id: int = Field(ge=0, description="HubSpot portal (hub) id; 0 = global default.")
    action_id: int | None = Field(default=None, ge=1)
    rate: Rate
    daily_cap: DailyCap | None = None
    schedule: Schedule | None = None
    scope: Literal["Shared", "PerWorkflow"] = "Shared"
    """Shared: one queue (and one rate) for every workflow using the policy. PerWorkflow: each
    workflow gets its own queue with its own rate, daily cap and schedule."""
    expiration: Duration = Field(default=timedelta(days=7))
    overflow: Literal["Block", "Continue", "Fail"] = "Block"
    paused: bool = False

    _revision: int = PrivateAttr(default=0)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                "must be lower-case letters, digits, '-' or '.', starting and ending with a "
                "letter or digit (a Kubernetes object name)"
            )
        return value

    @field_validator("expiration")
    @classmethod
    def _expiration(cls, value: timedelta) -> timedelta:
        if not timedelta(minutes=1) <= value <= timedelta(days=90):
            raise ValueError("must be between 1 minute (PT1M) and 90 days (P90D)")
        return value

    # --- identity -------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """`portal:name`, the policy's identity in Redis."""
        return f"{self.portal_id}:{self.name}"

    @property
    def revision(self) -> int:
        """Registry revision of this copy (0 = unknown); an older one never overwrites newer."""
        return self._revision

    def with_revision(self, revision: int) -> Policy:
        copy = self.model_copy()
        copy._revision = revision
        return copy

    def for_portal(self, portal_id: int) -> Policy:
        """The global default, applied to one portal (its own queue and rate state)."""
        copy = self.model_copy(update={"portal_id": portal_id})
        copy._revision = self._revision
        return copy

    def spec(self) -> dict[str, Any]:
        """The camelCase spec (what a CRD or the config API holds)."""
        return self.model_dump(by_alias=True, mode="json", exclude_none=True)

    @property
    def content_hash(self) -> str:
        text = json.dumps(self.spec(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def queue_id(self, workflow_id: int | None) -> str:
        """`shared`, or `wf<id>` when each workflow gets its own queue and rate."""
        if self.scope == "PerWorkflow" and workflow_id is not None:
            return f"wf{workflow_id}"
        return "shared"

    @property
    def expiration_iso(self) -> str:
        return format_duration(self.expiration)

    # --- calendar arithmetic (mirrors lua/_lib.lua) ----------------------------------------------
    def released_allowed_at(self, t: float) -> bool:
        """Whether the schedule lets anything out at instant `t` (ignores rate and cap)."""
        return self.schedule is None or in_window(self.schedule, t)

    def open_segments(self, start: float, end: float) -> Iterator[tuple[float, float, int]]:
        """Intervals in [start, end) where releases may happen, each with its cap-day number.

        Windows are cut at the daily cap's local midnights, so each segment belongs to one cap
        day (`-1` when there is no cap).
        """
        spans: list[tuple[float, float]]
        if self.schedule is None:
            spans = [(start, end)]
        else:
            spans = list(window_spans(self.schedule, start, end))
        for a, b in spans:
            if self.daily_cap is None:
                yield a, b, -1
                continue
            zone = ZoneInfo(self.daily_cap.time_zone)
            while a < b:
                day = local_day(zone, a)
                midnight = local_midnight_after(zone, a)
                yield a, min(b, midnight), day
                a = min(b, midnight)

    def projected_wait(
        self, position: int, now: float, first_at: float | None = None, cap_used: int = 0
    ) -> float:
        """Seconds until the item at 1-based `position` of a queue is likely released.

        An estimate for the overflow decision and the webhook's answer: items leave one per
        emission interval from `first_at` (when the rate lets the queue's head go), only inside
        schedule windows, at most the daily cap per local day. `inf` if it would not happen
        within twice the expiration.
        """
        if self.paused:
            return math.inf
        interval = self.rate.emission_interval
        start = max(now, first_at or now)
        if self.schedule is None and self.daily_cap is None:
            return start - now + max(0, position - 1) * interval
        horizon = start + 2 * self.expiration.total_seconds()
        cap = self.daily_cap.limit if self.daily_cap else None
        remaining = position
        tat = start
        used: dict[int, int] = {}
        first_day: int | None = None
        for a, b, day in self.open_segments(start, horizon):
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

    def capacity_within(self, now: float, seconds: float | None = None) -> int:
        """About how many items could be released from `now` until the expiration runs out."""
        if self.paused:
            return 0
        horizon = now + (seconds if seconds is not None else self.expiration.total_seconds())
        interval = self.rate.emission_interval
        cap = self.daily_cap.limit if self.daily_cap else None
        per_day: dict[int, int] = {}
        prev_end = None
        for a, b, day in self.open_segments(now, horizon):
            n = math.floor((b - a) / interval)
            if prev_end is None or a > prev_end:
                n += 1 + self.rate.burst
            prev_end = b
            per_day[day] = per_day.get(day, 0) + n
        if cap is not None:
            return sum(min(cap, n) for n in per_day.values())
        return sum(per_day.values())

    # --- what the Lua scripts get ----------------------------------------------------------------
    def redis_fields(self, now: float) -> dict[str, str]:
        """The flat parameter hash `take` reads (see lua/take.lua for each field)."""
        fields = {
            "name": self.name,
            "portal": str(self.portal_id),
            "lim": str(self.rate.limit),
            "per": str(round(self.rate.period.total_seconds() * 1_000_000)),
            "burst": str(self.rate.burst),
            "paused": "1" if self.paused else "0",
            "exp": str(round(self.expiration.total_seconds() * 1000)),
            "scope": self.scope,
            "cap": "0",
            "ctz": "",
            "wins": "",
            "stz": "",
            "flush": "",
        }
        if self.daily_cap is not None:
            fields["cap"] = str(self.daily_cap.limit)
            fields["ctz"] = encode_transitions(self.daily_cap.time_zone, now)
        if self.schedule is not None:
            fields["wins"] = ";".join(
                f"{d},{w.start_minute},{w.end_minute}"
                for w in self.schedule.windows
                for d in w.weekdays
            )
            fields["stz"] = encode_transitions(self.schedule.time_zone, now)
        return fields


def policy_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """(field path in camelCase, message) for each problem, for 4xx bodies and CLI messages."""
    out = []
    for error in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(p) for p in error["loc"]) or "spec"
        message = str(error["msg"]).removeprefix("Value error, ")
        out.append((path, message))
    return out


# --- time zones ---------------------------------------------------------------------------------
def _offset(zone: ZoneInfo, t: float) -> int:
    delta = datetime.fromtimestamp(t, UTC).astimezone(zone).utcoffset()
    return int(delta.total_seconds()) if delta else 0


@lru_cache(maxsize=256)
def transitions(zone_name: str, start: int, end: int) -> tuple[tuple[int, int], ...]:
    """(utc second, offset seconds) from `start`, then at every change of offset up to `end`."""
    zone = ZoneInfo(zone_name)
    out = [(start, _offset(zone, start))]
    t = start
    step = 6 * 3600
    while t < end:
        nxt = min(t + step, end)
        if _offset(zone, nxt) != out[-1][1]:
            lo, hi = t, nxt  # offset at lo == current, at hi differs
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(zone, mid) == out[-1][1]:
                    lo = mid
                else:
                    hi = mid
            out.append((hi, _offset(zone, hi)))
        t = nxt
    return tuple(out)


def encode_transitions(zone_name: str, now: float) -> str:
    """The offset table Lua uses: one year back to ten years ahead, `t:o,t:o,...`."""
    year = 365 * 86400
    base = int(now) // 86400 * 86400
    start, end = base - year, base + 10 * year
    return ",".join(f"{t}:{o}" for t, o in transitions(zone_name, start, end))


def local_day(zone: ZoneInfo, t: float) -> int:
    """Days since 1970-01-01 of the local date at instant `t`."""
    return math.floor((t + _offset(zone, t)) / 86400)


def local_midnight_after(zone: ZoneInfo, t: float) -> float:
    day = local_day(zone, t) + 1
    naive = datetime(1970, 1, 1) + timedelta(days=day)
    return naive.replace(tzinfo=zone).timestamp()


def in_window(schedule: Schedule, t: float) -> bool:
    """Whether instant `t` falls in a window, judged by the local wall clock at `t`."""
    zone = ZoneInfo(schedule.time_zone)
    local = t + _offset(zone, t)
    day = math.floor(local / 86400)
    minute = (local - day * 86400) / 60
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    return any(
        weekday in w.weekdays and w.start_minute <= minute < w.end_minute for w in schedule.windows
    )


def window_spans(schedule: Schedule, start: float, end: float) -> Iterator[tuple[float, float]]:
    """Merged [a, b) UTC intervals inside `start`..`end` where the schedule is open.

    Built from local wall-clock windows, so a window crossing a DST change is an hour shorter
    or longer in real time, exactly as the Lua membership test sees it.
    """
    zone = ZoneInfo(schedule.time_zone)
    first = local_day(zone, start) - 1
    last = local_day(zone, end) + 1
    spans: list[tuple[float, float]] = []
    for day in range(first, last + 1):
        weekday = (day + 3) % 7
        base = datetime(1970, 1, 1) + timedelta(days=day)
        for w in schedule.windows:
            if weekday not in w.weekdays:
                continue
            a = (base + timedelta(minutes=w.start_minute)).replace(tzinfo=zone).timestamp()
            b = (base + timedelta(minutes=w.end_minute)).replace(tzinfo=zone).timestamp()
            a, b = max(a, start), min(b, end)
            if a < b:
                spans.append((a, b))
    spans.sort()
    merged: list[tuple[float, float]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    yield from merged
