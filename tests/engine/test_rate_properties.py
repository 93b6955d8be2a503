"""The rate holds whatever the policy, the arrivals and the number of dispatchers.

Time is Redis' clock shifted by the test (the scripts' debug offset), jumping from event to
event, so a minute of traffic runs in well under a second and every release time is exact.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.builders import item, policy
from tests.fixtures.simulation import Simulation, max_in_window
from throttle.engine.policy import Policy
from throttle.engine.queue import QueueItem
from throttle.engine.registry import reconcile
from throttle_dev.localenv import RedisServer

policies_st = st.builds(
    lambda limit, period, burst: {"limit": limit, "period": f"{period}s", "burst": burst},
    st.integers(1, 10),
    st.sampled_from([1, 2, 5, 10]),
    st.integers(0, 3),
)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    rates = draw(st.lists(policies_st, min_size=1, max_size=3))
    backlog = draw(st.booleans())
    arrivals = []
    for index in range(len(rates)):
        if backlog:
            arrivals.append((index, 0.0, draw(st.integers(15, 40))))
        else:
            for _ in range(draw(st.integers(1, 4))):
                arrivals.append((index, draw(st.floats(0, 30)), draw(st.integers(1, 12))))
    return {
        "rates": rates,
        "backlog": backlog,
        "arrivals": arrivals,
        "dispatchers": draw(st.integers(1, 3)),
    }


async def check_scenario(client: Any, scenario: dict[str, Any]) -> None:
    await client.flushall()
    policies = [
        policy(name=f"p{i}", portal=100 + i % 2, rate=rate)
        for i, rate in enumerate(scenario["rates"])
    ]
    sim = Simulation(client, policies, dispatchers=scenario["dispatchers"])
    for p in policies:
        await reconcile(sim.queues[0], p)
    start = time.time() + 1.0
    arrivals: list[tuple[float, QueueItem, Policy]] = []
    order: dict[str, int] = {}
    for index, at, count in sorted(scenario["arrivals"], key=lambda a: a[1]):
        p = policies[index]
        for _ in range(count):
            cb = f"{p.name}-{len(order)}"
            order[cb] = len(order)
            arrivals.append((start + at, item(cb, portal=p.portal_id), p))
    await sim.run(arrivals, start, max_steps=5000)

    done = sim.completer.completed
    ids = [r.callback_id for r in done]
    # every enqueued callback completed exactly once
    assert sorted(ids) == sorted(order)
    for p in policies:
        mine = sorted(
            (r for r in done if r.policy == p.name),
            key=lambda r: (r.released_at_us, order[r.callback_id]),
        )
        times = [r.released_at_us for r in mine]
        # no window of the period releases more than limit + burst
        assert max_in_window(times, p.rate.period.total_seconds()) <= p.rate.limit + p.rate.burst
        # FIFO within the queue
        positions = [order[r.callback_id] for r in mine]
        assert positions == sorted(positions)
        if scenario["backlog"]:
            # a backlogged queue's long-run rate is the policy's rate (within 1%)
            steady = times[p.rate.burst :]
            span = (steady[-1] - steady[0]) / 1e6
            rate = (len(steady) - 1) / span
            expected = p.rate.limit / p.rate.period.total_seconds()
            assert abs(rate - expected) / expected < 0.01, (rate, expected)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_rate_properties(redis_server: RedisServer, scenario: dict[str, Any]) -> None:
    async def run() -> None:
        client = redis_server.client()
        try:
            await check_scenario(client, scenario)
        finally:
            await client.aclose()

    asyncio.run(run())


@pytest.mark.parametrize("dispatchers", [1, 3])
async def test_long_run_mean_rate(engine_redis: Any, dispatchers: int) -> None:
    """500 releases at 4 per second with 1 or 3 dispatchers, on one Redis and on the Cluster."""
    await check_scenario(
        engine_redis,
        {
            "rates": [{"limit": 4, "period": "1s", "burst": 2}, {"limit": 30, "period": "1m"}],
            "backlog": True,
            "arrivals": [(0, 0.0, 500), (1, 0.0, 60)],
            "dispatchers": dispatchers,
        },
    )


@pytest.mark.parametrize(
    ("rate", "burst", "keeps_rate"),
    [
        ({"limit": 50, "period": "1s"}, 1, True),  # no burst said: releases 20 ms apart get 1
        ({"limit": 50, "period": "1s", "burst": 0}, 0, False),  # said 0: lateness is lost
        ({"limit": 10, "period": "100s"}, 0, True),  # 10 s apart: strict, and 1 ms is noise
    ],
)
async def test_a_rate_without_a_burst_keeps_its_rate_when_every_take_is_late(
    engine_redis: Any, rate: dict[str, Any], burst: int, keeps_rate: bool
) -> None:
    """Each take comes 1 ms after its due time, as a dispatcher's wake-up does on a busy host.

    A policy that does not say its burst must still achieve the rate it says (the default burst
    absorbs the lateness); one that says `burst: 0` loses δ/T of it, as docs/policies.md warns."""
    p = policy(name="late", portal=100, rate=rate)
    assert p.rate.burst == burst
    sim = Simulation(engine_redis, [p])
    await reconcile(sim.queues[0], p)
    now = time.time() + 1.0
    sim.set_clock(now)
    for k in range(120):
        await sim.queues[0].enqueue(item(f"late-{k}", portal=100), p)
    for _ in range(1000):
        sim.set_clock(now)
        await sim.step()
        due = sim.next_due()
        if due is None or len(sim.completer.completed) == 120:
            break
        now = max(now, due) + 0.001
    times = sim.completer.release_times()[burst:]  # the saved-up release spent at the start
    assert len(times) == 120 - burst
    achieved = (len(times) - 1) / ((times[-1] - times[0]) / 1e6)
    limit = p.rate.limit / p.rate.period.total_seconds()
    assert max_in_window(sim.completer.release_times(), p.rate.period.total_seconds()) <= (
        p.rate.limit + p.rate.burst
    )
    if keeps_rate:
        assert achieved == pytest.approx(limit, rel=0.005)
    else:
        assert achieved < limit * 0.97  # 20 ms apart, 1 ms late: 4.8% slow
