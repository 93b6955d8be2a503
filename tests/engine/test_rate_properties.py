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
