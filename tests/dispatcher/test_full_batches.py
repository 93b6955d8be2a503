"""A portal fed above its API budget's ceiling: calls, not callbacks, are what the budget counts,
so its completions must leave in full batches (judged from the simulator's side)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp

from tests.fixtures.builders import item as queue_item
from tests.fixtures.builders import policy
from tests.fixtures.completer_on_simulator import setup
from tests.fixtures.hubspot_simulator import RunningSimulator
from throttle.dispatcher.drain import Dispatcher
from throttle.engine.queue import Queue
from throttle.engine.registry import reconcile
from throttle.hubspot.tokens import TokenStore
from throttle.metrics import Metrics

PORTAL = 18
BATCH = 20
"""HubSpot's 100, scaled down with the budget: 5 calls a second, so a ceiling of 100/s."""
FEED = 300
"""Executions a second: three times the ceiling."""


async def test_a_portal_fed_above_its_ceiling_sends_full_batches(
    hubspot_sim: RunningSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    """Executions trickle in at three times the portal's ceiling and one dispatcher takes them
    as they come. The production figures scaled down: a budget of 5 calls per 1 s window,
    batches of 20 (ceiling 100/s), the dispatcher holding at most half a window's ceiling. Sent
    as they were released, the first calls spent the budget's window in a fraction of it on a
    few executions each, the window then freed its calls in that same bunch every time, and
    only what the dispatcher held went in full batches: a quarter to a third of each call empty.
    Every call after the first must carry a full batch (on average at least 95% of one: a
    loaded machine may starve the feed for a moment), and none is refused (429)."""
    p = policy(name="ceiling", portal=PORTAL, rate={"limit": 100_000, "period": "1s"})
    queue = Queue(redis, lease_seconds=30)
    await reconcile(queue, p)
    completer = await setup(hubspot_sim, store, session, redis, PORTAL, [], budget=5, window_s=1)
    dispatcher = Dispatcher(
        queue,
        completer,
        Metrics(),
        send_batch=BATCH,
        max_held=50,
        poll_seconds=0.01,
        portal_calls_per_second=5,
        partial_gap=0.2,  # what `throttle dispatcher` sets: the budget's window / its calls
    )
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stop))
    try:
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < 4.0:
            due = int((time.monotonic() - started) * FEED)
            ids = [f"full-{i}" for i in range(sent, due)]
            for callback_id in ids:
                hubspot_sim.sim.add_blocked(callback_id, PORTAL)
            for start in range(0, len(ids), 16):  # a late turn must not exhaust the pool
                chunk = ids[start : start + 16]
                items = [queue_item(c, portal=PORTAL) for c in chunk]
                await asyncio.gather(*(queue.enqueue(i, p) for i in items))
            sent = max(sent, due)
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await running
    sizes = Counter(c.request for c in hubspot_sim.sim.completions)
    in_order = [sizes[r] for r in sorted(sizes)]
    later = in_order[1:]  # the first call goes with what the first take released
    assert sent >= 0.9 * FEED * 4.0  # fed above the ceiling throughout
    assert len(later) >= 15, in_order
    assert sum(later) / len(later) >= 0.95 * BATCH, in_order
    assert hubspot_sim.sim.portal(PORTAL).rate_limited == 0
