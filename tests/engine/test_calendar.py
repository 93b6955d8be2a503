"""Daily caps, release windows across DST changes, pause and live rate changes, on a clock the
test controls (Redis TIME plus the scripts' debug offset)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.fixtures.builders import item, policy
from tests.fixtures.simulation import Simulation, max_in_window
from throttle.engine.calendars import DAYS, in_window, window_spans
from throttle.engine.policy import Policy, Schedule
from throttle.engine.registry import reconcile


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


async def take_at(sim: Simulation, epoch: float) -> int:
    sim.set_clock(epoch)
    before = len(sim.completer.completed)
    await sim.step()
    return len(sim.completer.completed) - before


async def backlog(sim: Simulation, p: Policy, count: int, at: float) -> None:
    sim.set_clock(at)
    for i in range(count):
        await sim.queues[0].enqueue(item(f"{p.name}-{i}", portal=p.portal_id), p)


async def test_daily_cap_resets_at_local_midnight_across_dst(redis: Any) -> None:
    # 2027-03-14 is 23 hours long in New York: midnight to midnight is 05:00Z -> 04:00Z
    p = policy(
        rate={"limit": 100, "period": "1s", "burst": 20},
        dailyCap={"limit": 5, "timeZone": "America/New_York"},
    )
    sim = Simulation(redis, [p])
    await reconcile(sim.queues[0], p)
    await backlog(sim, p, 12, utc("2027-03-14T05:00:00"))
    assert await take_at(sim, utc("2027-03-14T05:00:00.010")) == 5
    assert await take_at(sim, utc("2027-03-14T20:00:00")) == 0
    assert await take_at(sim, utc("2027-03-15T03:59:59")) == 0
    # the queue is due exactly at the next local midnight, not polled before
    assert sim.next_due() is not None
    assert abs(sim.next_due() - utc("2027-03-15T04:00:00")) < 0.002
    assert await take_at(sim, utc("2027-03-15T04:00:00.010")) == 5
    assert await take_at(sim, utc("2027-03-15T23:00:00")) == 0
    assert await take_at(sim, utc("2027-03-16T04:00:00.010")) == 2


async def test_daily_cap_in_another_zone(redis: Any) -> None:
    p = policy(
        rate={"limit": 100, "period": "1s", "burst": 20},
        dailyCap={"limit": 3, "timeZone": "Asia/Tokyo"},
    )
    sim = Simulation(redis, [p])
    await reconcile(sim.queues[0], p)
    await backlog(sim, p, 5, utc("2027-06-01T10:00:00"))
    assert await take_at(sim, utc("2027-06-01T10:00:01")) == 3  # 19:00 in Tokyo
    assert await take_at(sim, utc("2027-06-01T14:59:59")) == 0  # 23:59:59 in Tokyo
    assert await take_at(sim, utc("2027-06-01T15:00:00.010")) == 2  # Tokyo's midnight


async def run_window_day(redis: Any, start: str, end: str) -> list[int]:
    p = policy(
        rate={"limit": 1, "period": "1m"},
        schedule={
            "timeZone": "America/New_York",
            "windows": [{"days": ["Sun"], "start": "01:00", "end": "04:00"}],
        },
    )
    sim = Simulation(redis, [p])
    await reconcile(sim.queues[0], p)
    await backlog(sim, p, 300, utc(start))
    await sim.run([], utc(start), max_steps=2000, until=utc(end))
    times = sim.completer.release_times()
    assert times, "nothing released"
    assert p.schedule is not None
    for t in times:
        assert in_window(p.schedule, t / 1e6)
    assert max_in_window(times, 60) <= 1
    return times


async def test_window_across_spring_forward(redis: Any) -> None:
    # 01:00-04:00 local on 2027-03-14 lasts 2 real hours (02:00 does not exist): 06:00Z-08:00Z
    times = await run_window_day(redis, "2027-03-14T04:00:00", "2027-03-14T10:00:00")
    assert len(times) == 120
    assert utc("2027-03-14T06:00:00") <= times[0] / 1e6 < utc("2027-03-14T06:00:01")
    assert times[-1] / 1e6 < utc("2027-03-14T08:00:00")


async def test_window_across_fall_back(redis: Any) -> None:
    # 01:00-04:00 local on 2027-11-07 lasts 4 real hours (01:00-02:00 happens twice): 05:00Z-09:00Z
    times = await run_window_day(redis, "2027-11-07T03:00:00", "2027-11-07T10:00:00")
    assert len(times) == 240
    assert utc("2027-11-07T05:00:00") <= times[0] / 1e6 < utc("2027-11-07T05:00:01")
    assert times[-1] / 1e6 < utc("2027-11-07T09:00:00")


async def test_live_rate_change_has_no_catch_up_burst(redis: Any) -> None:
    slow = policy(rate={"limit": 2, "period": "1s", "burst": 0})  # exact counts below
    sim = Simulation(redis, [slow])
    queue = sim.queues[0]
    await reconcile(queue, slow)
    t0 = utc("2027-05-01T12:00:00")
    await backlog(sim, slow, 400, t0)
    await sim.run([], t0, max_steps=5000, until=t0 + 20)
    fast = slow.model_copy(update={"rate": slow.rate.model_copy(update={"limit": 10})})
    sim.set_clock(t0 + 20)
    await reconcile(queue, fast)
    await sim.run([], t0 + 20, max_steps=5000, until=t0 + 40)
    slower = slow.model_copy(update={"rate": slow.rate.model_copy(update={"limit": 1})})
    sim.set_clock(t0 + 40)
    await reconcile(queue, slower)
    await sim.run([], t0 + 40, max_steps=5000, until=t0 + 60)

    times = sim.completer.release_times()

    def phase(a: float, b: float) -> list[int]:
        return [t for t in times if a * 1e6 <= t < b * 1e6]

    first, second, third = phase(t0, t0 + 20), phase(t0 + 20, t0 + 40), phase(t0 + 40, t0 + 60)
    assert len(first) in (40, 41)
    assert max_in_window(second, 1.0) <= 10  # the new limit from the first take, no catch-up
    assert len(second) in (199, 200, 201)
    assert max_in_window(third, 1.0) <= 1
    assert len(third) in (19, 20, 21)
    assert max_in_window(phase(t0 + 19, t0 + 21), 1.0) <= 10


async def test_pause_holds_and_resume_continues(redis: Any) -> None:
    p = policy(rate={"limit": 5, "period": "1s"})
    sim = Simulation(redis, [p])
    queue = sim.queues[0]
    await reconcile(queue, p)
    t0 = utc("2027-05-01T12:00:00")
    await backlog(sim, p, 30, t0)
    await sim.run([], t0, max_steps=500, until=t0 + 2)
    released = len(sim.completer.completed)
    assert released in (10, 11)
    sim.set_clock(t0 + 2)
    await reconcile(queue, p.model_copy(update={"paused": True}))
    await sim.run([], t0 + 2, max_steps=500, until=t0 + 60)
    assert len(sim.completer.completed) == released
    sim.set_clock(t0 + 60)
    await reconcile(queue, p)
    await sim.run([], t0 + 60, max_steps=500, until=t0 + 70)
    ids = [r.callback_id for r in sim.completer.completed]
    assert sorted(ids) == sorted(f"{p.name}-{i}" for i in range(30))
    assert len(set(ids)) == 30


@settings(max_examples=60, deadline=None)
@given(
    windows=st.lists(
        st.tuples(
            st.sets(st.integers(0, 6), min_size=1),
            st.integers(0, 1439),
            st.integers(1, 1440),
        ).filter(lambda w: w[1] < w[2]),
        min_size=1,
        max_size=4,
    ),
    zone=st.sampled_from(["America/New_York", "Europe/Paris", "Asia/Kolkata", "UTC"]),
    start=st.floats(utc("2027-03-10T00:00:00"), utc("2027-11-10T00:00:00")),
)
@example(  # windows that meet: at noon, and at midnight from Monday into Tuesday
    windows=[({0, 1}, 540, 720), ({0, 1}, 720, 1020), ({0}, 1200, 1440), ({1}, 0, 240)],
    zone="Europe/Paris",
    start=utc("2027-03-28T00:00:00"),  # the week Paris moves to summer time
)
@example(  # a window ending in the hour New York skips: closed from the jump, not at 03:10
    windows=[({0, 1, 2, 3, 4, 5, 6}, 0, 130)],
    zone="America/New_York",
    start=utc("2027-03-13T00:00:00"),
)
@example(  # a window in the hour New York repeats: open in both passes of it
    windows=[({6}, 60, 90)],
    zone="America/New_York",
    start=utc("2027-11-06T00:00:00"),
)
def test_window_spans_are_exactly_the_open_instants(
    windows: list[tuple[set[int], int, int]], zone: str, start: float
) -> None:
    """The spans the forecast walks (built a day at a time, merged on the fly) are ordered,
    apart, and open exactly where the engine's membership test is, overlapping windows,
    windows that meet at midnight and windows in the hours daylight saving skips or repeats
    included."""
    schedule = Schedule.model_validate(
        {
            "timeZone": zone,
            "windows": [
                {
                    "days": [DAYS[d] for d in sorted(days)],
                    "start": f"{a // 60:02d}:{a % 60:02d}",
                    "end": f"{b // 60:02d}:{b % 60:02d}",
                }
                for days, a, b in windows
            ],
        }
    )
    end = start + 9 * 86400
    spans = list(window_spans(schedule, start, end))
    for (_a1, b1), (a2, _b2) in itertools.pairwise(spans):
        assert b1 < a2, spans  # ordered, and adjacent spans merged
    t = start
    while t < end:
        assert in_window(schedule, t) == any(a <= t < b for a, b in spans), t
        t += 599.0  # not a divisor of a minute or an hour: samples every offset in a window
