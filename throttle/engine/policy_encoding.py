"""A policy as the Lua scripts read it: the flat parameter hash and the time-zone offset tables.

Lua in Redis has no zone database and no JSON parser worth its cost on every take, so a policy
is written into Redis (`keys.params`) as flat string fields (`lua/take.lua` reads each), with
each time zone as an offset table from one year back to ten years ahead — long enough that a
policy written once keeps its local midnights and windows right for years.
"""

from __future__ import annotations

from throttle.engine.calendars import transitions
from throttle.engine.policy import Policy


def redis_fields(policy: Policy, now: float) -> dict[str, str]:
    """The flat parameter hash `take` reads (see lua/take.lua for each field)."""
    fields = {
        "name": policy.name,
        "portal": str(policy.portal_id),
        "lim": str(policy.rate.limit),
        "per": str(round(policy.rate.period.total_seconds() * 1_000_000)),
        "burst": str(policy.rate.burst),
        "paused": "1" if policy.paused else "0",
        "exp": str(round(policy.expiration.total_seconds() * 1000)),
        "scope": policy.scope,
        "cap": "0",
        "ctz": "",
        "wins": "",
        "stz": "",
        "flush": "",
    }
    if policy.daily_cap is not None:
        fields["cap"] = str(policy.daily_cap.limit)
        fields["ctz"] = encode_transitions(policy.daily_cap.time_zone, now)
    if policy.schedule is not None:
        fields["wins"] = ";".join(
            f"{d},{w.start_minute},{w.end_minute}"
            for w in policy.schedule.windows
            for d in w.weekdays
        )
        fields["stz"] = encode_transitions(policy.schedule.time_zone, now)
    return fields


def encode_transitions(zone_name: str, now: float) -> str:
    """The offset table Lua uses (`tz_parse` in lua/_lib.lua): `t:o,t:o,...`, from one year
    back to ten years ahead, day-aligned so one policy's writes share a cached table."""
    year = 365 * 86400
    base = int(now) // 86400 * 86400
    start, end = base - year, base + 10 * year
    return ",".join(f"{t}:{o}" for t, o in transitions(zone_name, start, end))
