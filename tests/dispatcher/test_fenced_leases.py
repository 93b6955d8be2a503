"""Leases that run out while their holder is completing: no execution reaches HubSpot twice.

Two dispatchers share a portal; HubSpot is the simulator, which counts every completion request
naming a callback it had already completed (`sent_twice`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from tests.fixtures.builders import item, policy
from tests.fixtures.completer_on_simulator import released, setup
from tests.fixtures.hubspot_simulator import RunningSimulator
from throttle.dispatcher.complete import Completer, CompletionResult
from throttle.dispatcher.drain import Dispatcher
from throttle.dispatcher.reaper import LeaseReaper
from throttle.engine import keys
from throttle.engine.queue import Queue, Released
from throttle.engine.registry import reconcile
from throttle.hubspot.tokens import TokenStore
from throttle.metrics import Metrics

PORTAL = 31


class Stuck:
    """A completion that does not get its request out (the portal's budget or token is slow to
    come) until the test lets it: then it goes to HubSpot as it would have."""

    def __init__(self, inner: Completer) -> None:
        self.inner = inner
        self.entered = asyncio.Event()
        self.go = asyncio.Event()

    async def complete(self, portal_id: int, items: Sequence[Released]) -> CompletionResult:
        self.entered.set()
        await self.go.wait()
        return await self.inner.complete(portal_id, items)


async def _enqueue(queue: Queue, p: Any, callback_ids: Sequence[str]) -> None:
    for callback_id in callback_ids:
        await queue.enqueue(item(callback_id, portal=PORTAL), p)


async def test_a_lease_that_runs_out_mid_completion_is_never_sent_twice(
    hubspot_sim: RunningSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    """200 times: dispatcher A's completion is stuck before its request leaves, and A renews
    nothing, so its lease runs out mid-completion; dispatcher B takes the executions as soon as
    they are free and completes them, then A's request could go. A's completion must end before
    its lease does (it hands them back unsent), so HubSpot sees each execution once. (Before: A
    held them 12 s, the request's cover, then B took them while A was still stuck, and A's
    request went out after B's: 200 sent twice.)"""
    p = policy(name="fenced", portal=PORTAL, rate={"limit": 1000, "period": "1s", "burst": 1000})
    queue_a, queue_b = Queue(redis, lease_seconds=1.0), Queue(redis, lease_seconds=1.0)
    await reconcile(queue_a, p)
    blocked = released(PORTAL, 200)
    completer = await setup(hubspot_sim, store, session, redis, PORTAL, blocked)
    shard = [keys.shard_of(p.key)]
    reaper = LeaseReaper(queue_b, Metrics())
    for round_ in range(2):  # a take leases 100 (what one call completes within a 1 s lease)
        ids = [r.callback_id for r in blocked[round_ * 100 : (round_ + 1) * 100]]
        await _enqueue(queue_a, p, ids)
        stuck = Stuck(completer)
        a = Dispatcher(queue_a, stuck, Metrics(), retry_base=0.05, queue_quota=1000)
        b = Dispatcher(queue_b, completer, Metrics(), retry_base=0.05, queue_quota=1000)
        assert await a.step(shard) == 100
        await asyncio.wait_for(stuck.entered.wait(), 5.0)
        deadline = time.monotonic() + 20.0
        taken = 0
        while taken < 100 and time.monotonic() < deadline:
            await reaper.reap_once()
            taken += await b.step(shard)
            await asyncio.sleep(0.05)
        await b.wait_idle()
        assert taken == 100
        stuck.go.set()
        await a.wait_idle()
    stats = await queue_a.stats(p)
    assert (stats.acked, stats.failed, stats.in_flight, stats.depth) == (200, 0, 0, 0)
    sim = hubspot_sim.sim
    assert len(sim.completions) == 200
    assert sim.portal(PORTAL).sent_twice == 0


async def test_leases_are_held_while_hubspot_answers_slower_than_a_lease(
    hubspot_sim: RunningSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    """HubSpot applies each completion at once and answers 2.5 s later, longer than the 2 s
    lease the take gave: two dispatchers and a reaper run, and each of the 200 executions (five
    calls of 40) would lose its lease mid-call if it were not extended while its call is out,
    or while it waits behind one. None returns to its queue, none is sent twice."""
    p = policy(name="slow", portal=PORTAL, rate={"limit": 1000, "period": "1s", "burst": 1000})
    queue = Queue(redis, lease_seconds=2.0)
    await reconcile(queue, p)
    blocked = released(PORTAL, 200)
    completer = await setup(hubspot_sim, store, session, redis, PORTAL, blocked, max_in_flight=2)
    await _enqueue(queue, p, [r.callback_id for r in blocked])
    hubspot_sim.sim.set_faults(completion_answer_delay_ms=2500)
    dispatchers = [
        Dispatcher(Queue(redis, lease_seconds=2.0), completer, Metrics(), send_batch=40)
        for _ in range(2)
    ]
    stop = asyncio.Event()
    reaper = LeaseReaper(queue, Metrics(), interval=0.2)
    tasks = [asyncio.create_task(d.run(stop)) for d in dispatchers]
    tasks.append(asyncio.create_task(reaper.run(stop)))
    try:
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline and (await queue.stats(p)).acked < 200:
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    stats = await queue.stats(p)
    assert (stats.acked, stats.failed, stats.requeued) == (200, 0, 0)
    assert hubspot_sim.sim.portal(PORTAL).sent_twice == 0
