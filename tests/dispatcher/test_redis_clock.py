"""The dispatcher wakes when a queue is due on Redis' clock; its reading of that clock decides how
late every `burst: 0` release is (bench/wake.py measures the lateness)."""

from __future__ import annotations

from throttle.dispatcher.drain import RedisClock


def test_the_reading_from_the_shortest_round_trip_wins() -> None:
    clock = RedisClock()
    # Redis read its clock at 100.000 (ours): a 2 ms round trip dates it within 1 ms.
    clock.sample(redis_now=100.000, sent=99.999, answered=100.001)
    assert abs(clock.skew) < 1e-9
    # A slow round trip (a loaded machine) would put Redis 40 ms behind: not taken.
    clock.sample(redis_now=100.500, sent=100.500, answered=100.580)
    assert abs(clock.skew) < 1e-9
    # As short a round trip, later: taken (the clocks may drift).
    clock.sample(redis_now=101.003, sent=101.000, answered=101.002)
    assert abs(clock.skew - 0.002) < 1e-9


def test_an_old_best_reading_gives_way() -> None:
    clock = RedisClock(max_age_s=5.0)
    clock.sample(redis_now=100.0, sent=100.0, answered=100.0)
    clock.sample(redis_now=106.1, sent=106.0, answered=106.1)  # slower, but the best is stale
    assert abs(clock.skew - 0.05) < 1e-9


def test_a_take_that_read_no_clock_changes_nothing() -> None:
    clock = RedisClock()
    clock.sample(redis_now=100.0, sent=99.999, answered=100.001)
    clock.sample(redis_now=0.0, sent=100.5, answered=100.5)
    assert abs(clock.skew) < 1e-9
