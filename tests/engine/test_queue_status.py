"""The queue figures `throttle status` and the console share: one portal's policies and inline
queues, each state decided per queue as take.lua decides it, read in a few round trips however
many queues the portal has (single Redis and the 3-node Cluster)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from tests.fixtures.builders import item, policy
from throttle.engine.inline import decide
from throttle.engine.policy import InlineCeiling, Policy
from throttle.engine.queue import Queue
from throttle.engine.queue_status import StatusReader, status_json
from throttle.engine.registry import ensure_inline, reconcile
from throttle_dev.localenv import RedisServer


async def inline_queue(queue: Queue, portal: int, workflow: int) -> Policy:
    decision = decide(
        {"rate_count": "2"},
        portal_id=portal,
        workflow_id=workflow,
        action_id=22,
        ceiling=InlineCeiling(),
        default_max_per_minute=600,
        now=time.time(),
    )
    await ensure_inline(queue, decision)
    return decision.policy


async def test_one_portals_policies_and_inline_queues(engine_redis: Any) -> None:
    queue = Queue(engine_redis)
    for portal in (7, 8):
        await reconcile(queue, policy("enrich", portal=portal))
        await queue.enqueue(item(f"cb-{portal}", portal=portal), policy("enrich", portal=portal))
    mine = await inline_queue(queue, 7, 11)
    await inline_queue(queue, 8, 11)
    await queue.enqueue(item("cb-inline", portal=7), mine)
    reader = StatusReader(engine_redis)
    rows = await reader.rows(7)
    assert [(r.portal_id, r.name, r.kind, r.queued) for r in rows] == [
        (7, "enrich", "policy", 1),
        (7, mine.name, "inline", 1),
    ]
    assert {r.portal_id for r in await reader.rows()} == {7, 8}
    assert await reader.rows(9) == []
    assert [q["kind"] for q in status_json(rows)["queues"]] == ["policy", "inline"]


async def test_a_per_workflow_cap_is_reached_when_every_queue_has_reached_it(
    engine_redis: Any,
) -> None:
    """take.lua counts the cap per queue: a PerWorkflow policy whose one workflow has spent its
    day still releases the other's."""
    queue = Queue(engine_redis)
    capped = policy(
        "capped",
        rate={"limit": 100, "period": "1s", "burst": 0},
        dailyCap={"limit": 1},
        scope="PerWorkflow",
    )
    await reconcile(queue, capped)
    for n in range(2):
        await queue.enqueue(item(f"a-{n}", workflow=1), capped)
    await queue.enqueue(item("b-0", workflow=2), capped)
    reader = StatusReader(engine_redis)
    first = (await queue.take()).released
    await asyncio.sleep(0.05)
    first += (await queue.take()).released
    assert sorted(r.callback_id for r in first) == ["a-0", "b-0"]
    await queue.enqueue(item("b-1", workflow=2), capped)
    [row] = await reader.rows(7)
    assert (row.state, row.released_today, row.queued) == ("daily_cap_reached", 2, 2)
    await queue.enqueue(item("c-0", workflow=3), capped)
    [row] = await reader.rows(7)
    assert (row.state, row.released_today, row.queued) == ("releasing", 2, 3)
    assert [r.callback_id for r in (await queue.take()).released] == ["c-0"]


async def test_a_thousand_queues_in_a_few_round_trips(redis_server: RedisServer) -> None:
    """Every `stats` call, daily-cap read and HubSpot fact is pipelined: counted as the
    commands the client sends to Redis, one send per round trip."""
    sends = [0]

    class Counting(aioredis.Connection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sends[0] += 1
            await super().send_packed_command(command, check_health)

    pool = aioredis.ConnectionPool.from_url(redis_server.url, connection_class=Counting)
    client = aioredis.Redis(connection_pool=pool)
    await client.flushall()
    queue = Queue(client)
    policies = [
        policy(f"p{n}", portal=9, **({"dailyCap": {"limit": 50}} if n % 2 else {}))
        for n in range(1000)
    ]
    for p in policies:
        await reconcile(queue, p)
    for p in policies[:100]:
        await queue.enqueue(item(f"cb-{p.name}", portal=9), p)
    await reconcile(queue, policy("elsewhere", portal=10))
    reader = StatusReader(client)
    await reader.rows(9)  # loads the scripts (SCRIPT LOAD on the first NOSCRIPT) once
    sends[0] = 0
    rows = await reader.rows(9)
    assert len(rows) == 1000
    assert sum(r.queued for r in rows) == 100
    assert sends[0] <= 6, sends[0]  # revision, registry, inline, stats, HubSpot facts
    await client.aclose()
