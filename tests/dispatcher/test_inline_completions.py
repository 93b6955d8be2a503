"""What the dispatcher says of inline queues (docs/policies.md, "Inline rates"): the completion's
output fields as the HubSpot simulator received them, and the queue metrics."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from tests.fixtures.builders import item
from tests.fixtures.completer_on_simulator import released, setup
from tests.fixtures.hubspot_simulator import RunningSimulator
from throttle.dispatcher.service import refresh_queue_metrics
from throttle.engine.inline import InlineDecision, decide
from throttle.engine.inline_index import InlineNotes
from throttle.engine.policy import InlineCeiling, Rate
from throttle.engine.queue import Queue
from throttle.engine.registry import ensure_inline
from throttle.hubspot.tokens import TokenStore
from throttle.metrics import Metrics


def clamped(portal: int) -> InlineDecision:
    """An inline queue whose rate the ceiling clamped (so it has a note)."""
    return decide(
        {"rate_count": "50", "rate_unit": "seconds"},
        portal_id=portal,
        workflow_id=5,
        action_id=6,
        ceiling=InlineCeiling(max_rate=Rate(limit=2)),
        default_max_per_minute=600,
        now=time.time(),
    )


async def test_hubspot_receives_which_rate_applied_and_why(
    hubspot_sim: RunningSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    decision = clamped(3)
    await ensure_inline(Queue(redis), decision)
    inline_items = [replace(r, policy=decision.policy.name) for r in released(3, 2, "in")]
    policy_items = released(3, 2, "pol")
    items = [*inline_items, *policy_items]
    notes = InlineNotes(redis)
    completer = await setup(hubspot_sim, store, session, redis, 3, items, notes=notes)
    result = await completer.complete(3, items)
    assert sorted(result.completed) == sorted(r.callback_id for r in items)
    seen = hubspot_sim.sim.callbacks
    assert seen["in-3-0"].output_fields == {
        "hs_execution_state": "SUCCESS",
        "throttle_status": "released",
        "throttle_wait_seconds": 12,
        "throttle_policy": decision.policy.name,
        "throttle_applied": "inline",
        "throttle_reason": "rate 50 per 1 second clamped to the portal's ceiling of 2 per 1 minute",
    }
    assert seen["pol-3-0"].output_fields == {  # a policy's completion: as before inline rates
        "hs_execution_state": "SUCCESS",
        "throttle_status": "released",
        "throttle_wait_seconds": 12,
        "throttle_policy": "enrich",
    }


async def test_inline_queues_are_in_the_queue_metrics(redis: Any) -> None:
    queue = Queue(redis)
    decision = clamped(4)
    await ensure_inline(queue, decision)
    for i in range(3):
        await queue.enqueue(item(f"cb-{i}", portal=4), decision.policy)
    metrics = Metrics(CollectorRegistry())
    stop = asyncio.Event()
    task = asyncio.create_task(refresh_queue_metrics(queue, metrics, stop, interval=0.05))
    await asyncio.sleep(0.2)
    stop.set()
    await task
    labels = {"policy": decision.policy.name, "portal": "4"}
    assert metrics.registry.get_sample_value("throttle_queue_depth", labels) == 3
