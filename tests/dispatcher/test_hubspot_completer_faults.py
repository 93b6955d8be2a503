"""Completion through injected HubSpot faults: errors, lost answers, latency, a storm, at once."""

from __future__ import annotations

import itertools
import time
from typing import Any

import aiohttp
import pytest

from tests.fixtures.completer_on_simulator import drain, released, setup
from tests.fixtures.hubspot_simulator import StartSimulator
from throttle.hubspot.tokens import TokenStore

pytestmark = pytest.mark.chaos


async def test_nothing_lost_and_nothing_completed_twice(
    start_simulator: StartSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    window = 1.0
    running = await start_simulator(rate_window_s=window, seed=7)
    portals = (21, 22, 23)
    items = {p: released(p, 400) for p in portals}
    completers = {  # a 10 ms retry backoff keeps the test short; the default is 1 s
        p: await setup(
            running, store, session, redis, p, items[p], window_s=window, retry_backoff_s=0.01
        )
        for p in portals
    }
    running.sim.set_faults(
        error_ratio=0.15,
        error_after_apply_ratio=0.1,
        latency_ms=5,
        storm_until=time.time() + 1.5,
        storm_portals=[22],
    )
    import asyncio

    outcomes = await asyncio.gather(
        *(drain(completers[p], p, items[p], rounds=5000) for p in portals)
    )
    sim = running.sim
    for portal, (done, failed, _) in zip(portals, outcomes, strict=True):
        wanted = {i.callback_id for i in items[portal]}
        assert done | set(failed) == wanted  # every callback has an outcome
        assert not done & set(failed)
        completed_in_hubspot = {c.callback_id for c in sim.completions if c.portal_id == portal}
        assert completed_in_hubspot == wanted  # HubSpot holds every one as completed...
        assert not failed  # ...and so do we: a lost answer's re-send is "already completed"
        assert len(sim.completions) == len({c.callback_id for c in sim.completions})
    times = sorted(sim.portal(22).rate_limited_at)
    assert times
    for earlier, later in itertools.pairwise(times):
        assert later - earlier >= window * 0.99
