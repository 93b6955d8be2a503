"""The dispatcher: settling completions, fairness, shutdown, a killed dispatcher, metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from tests.fixtures.builders import item, policy
from tests.fixtures.simulation import RecordingCompleter, Simulation
from throttle.dispatcher.complete import CompletionResult
from throttle.dispatcher.drain import Dispatcher
from throttle.dispatcher.service import refresh_queue_metrics
from throttle.engine import keys
from throttle.engine.queue import Queue, Released
from throttle.engine.registry import reconcile
from throttle.health_server import health_app
from throttle.metrics import Metrics
from throttle_dev.localenv import RedisServer

REPO = Path(__file__).resolve().parents[2]


async def test_retries_failures_and_completions_are_settled(redis: Any) -> None:
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    sim = Simulation(redis, [p])
    sim.completer.fail = {"p-1": "HubSpot: callback not found"}
    sim.completer.retry_once = {"p-2", "p-3"}
    queue = sim.queues[0]
    await reconcile(queue, p)
    for i in range(5):
        await queue.enqueue(item(f"p-{i}"), p)
    await sim.step()
    assert sorted(r.callback_id for r in sim.completer.completed) == ["p-0", "p-4"]
    stats = await queue.stats(p)
    assert (stats.failed, stats.requeued, stats.depth, stats.in_flight) == (1, 2, 2, 0)
    # the retried ones wait out the backoff (1 s for a first attempt), then go, in order
    queue.time_offset_ms = 500
    await sim.step()
    assert len(sim.completer.completed) == 2
    queue.time_offset_ms = 1100
    await sim.step()
    assert [r.callback_id for r in sim.completer.completed[2:]] == ["p-2", "p-3"]
    assert [r.attempts for r in sim.completer.completed[2:]] == [2, 2]


class Stopped:
    async def complete(self, portal_id: int, items: Sequence[Released]) -> CompletionResult:
        return CompletionResult(
            completed=[items[0].callback_id], portal_stopped="uninstalled: refresh token revoked"
        )


class Broken:
    async def complete(self, portal_id: int, items: Sequence[Released]) -> CompletionResult:
        raise ConnectionResetError


async def test_stopped_portal_fails_the_rest_and_errors_requeue(redis: Any) -> None:
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    queue = Queue(redis)
    await reconcile(queue, p)
    for i in range(3):
        await queue.enqueue(item(f"p-{i}"), p)
    await Dispatcher(queue, Broken(), Metrics(CollectorRegistry())).step([keys.shard_of(p.key)])
    await asyncio.sleep(0.05)
    stats = await queue.stats(p)
    assert (stats.requeued, stats.depth, stats.in_flight) == (3, 3, 0)
    queue.time_offset_ms = 2000
    dispatcher = Dispatcher(queue, Stopped(), Metrics(CollectorRegistry()))
    await dispatcher.step([keys.shard_of(p.key)])
    await dispatcher.wait_idle()
    stats = await queue.stats(p)
    assert (stats.acked, stats.failed, stats.depth, stats.in_flight) == (1, 2, 0, 0)


async def test_a_deep_queue_does_not_starve_other_portals(redis: Any) -> None:
    deep = policy(name="deep", portal=1, rate={"limit": 100_000, "period": "1s", "burst": 5000})
    small = [
        policy(name=f"small{i}", portal=10 + i, rate={"limit": 100, "period": "1s", "burst": 10})
        for i in range(5)
    ]
    queue = Queue(redis)
    for p in [deep, *small]:
        await reconcile(queue, p)
    for i in range(2000):
        await queue.enqueue(item(f"deep-{i}", portal=1), deep)
    for p in small:
        for i in range(3):
            await queue.enqueue(item(f"{p.name}-{i}", portal=p.portal_id), p)
    completer = RecordingCompleter()
    dispatcher = Dispatcher(queue, completer, Metrics(CollectorRegistry()), queue_quota=100)
    await dispatcher.step()
    await dispatcher.wait_idle()
    portals = {portal for portal, _n in completer.calls}
    assert portals == {1, 10, 11, 12, 13, 14}  # every portal served in the first round
    assert sum(n for portal, n in completer.calls if portal == 1) == 100  # its quota per take


class Slow:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.completed: list[str] = []

    async def complete(self, portal_id: int, items: Sequence[Released]) -> CompletionResult:
        await asyncio.sleep(self.seconds)
        self.completed += [r.callback_id for r in items]
        return CompletionResult(completed=[r.callback_id for r in items])


async def test_graceful_stop_finishes_or_returns_what_it_holds(redis: Any) -> None:
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    queue = Queue(redis)
    await reconcile(queue, p)
    for i in range(5):
        await queue.enqueue(item(f"p-{i}"), p)
    finishing = Slow(0.3)
    stop = asyncio.Event()
    dispatcher = Dispatcher(queue, finishing, Metrics(CollectorRegistry()), shutdown_timeout=5)
    task = asyncio.create_task(dispatcher.run(stop))
    while dispatcher.released_total < 5:
        await asyncio.sleep(0.01)
    stop.set()
    await task
    assert len(finishing.completed) == 5  # finished what it held
    assert (await queue.stats(p)).acked == 5

    for i in range(5, 10):
        await queue.enqueue(item(f"p-{i}"), p)
    hanging = Slow(60)
    stop = asyncio.Event()
    dispatcher = Dispatcher(queue, hanging, Metrics(CollectorRegistry()), shutdown_timeout=0.3)
    task = asyncio.create_task(dispatcher.run(stop))
    while dispatcher.released_total < 5:
        await asyncio.sleep(0.01)
    stop.set()
    await task
    stats = await queue.stats(p)
    assert (stats.depth, stats.in_flight) == (5, 0)  # handed back, at the head, nothing lost


async def test_killed_dispatcher_leases_are_released_by_another(
    redis: Any, redis_server: RedisServer
) -> None:
    p = policy(rate={"limit": 1000, "period": "1s", "burst": 100})
    queue = Queue(redis)
    await reconcile(queue, p)
    for i in range(20):
        await queue.enqueue(item(f"p-{i}"), p)
    shard = keys.shard_of(p.key)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fixtures.stalling_dispatcher",
            redis_server.url,
            str(shard),
            "2",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        assert line.strip() == b"holding 20"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (await queue.stats(p)).in_flight == 20
    survivor = RecordingCompleter()
    # The killed one's leases ran out: 2 s, extended before its request went to cover it (the
    # client's timeout, 10 s, and the budget's wait, 2 s).
    queue.time_offset_ms = 12_500
    dispatcher = Dispatcher(queue, survivor, Metrics(CollectorRegistry()))
    assert await queue.reap_expired_leases() == 20
    await dispatcher.step([shard])
    await dispatcher.wait_idle()
    assert [r.callback_id for r in survivor.completed] == [f"p-{i}" for i in range(20)]
    assert all(r.attempts == 2 for r in survivor.completed)
    stats = await queue.stats(p)
    assert (stats.acked, stats.depth, stats.in_flight) == (20, 0, 0)


async def test_metrics_and_health_endpoints(aiohttp_client: Any) -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.released.labels("7", "p").inc(3)
    healthy = [True]
    client = await aiohttp_client(
        health_app(metrics.registry, lambda: (healthy[0], {"detail": "loop ok"}))
    )
    text = await (await client.get("/metrics")).text()
    assert 'throttle_released_total{policy="p",portal="7"} 3.0' in text
    assert (await client.get("/healthz")).status == 200
    healthy[0] = False
    assert (await client.get("/healthz")).status == 503


async def test_queue_metrics_are_read_at_scrape_time(redis: Any) -> None:
    p = policy(rate={"limit": 1, "period": "1h"})
    queue = Queue(redis)
    await reconcile(queue, p)
    for i in range(4):
        await queue.enqueue(item(f"p-{i}"), p)
    await queue.take()
    metrics = Metrics(CollectorRegistry())
    stop = asyncio.Event()
    task = asyncio.create_task(refresh_queue_metrics(queue, metrics, stop, interval=0.05))
    await asyncio.sleep(0.2)
    stop.set()
    await task
    mine = {"policy": "p", "portal": "7"}
    assert metrics.registry.get_sample_value("throttle_queue_depth", mine) == 3
    assert metrics.registry.get_sample_value("throttle_in_flight", mine) == 1
    assert metrics.registry.get_sample_value("throttle_queue_oldest_age_seconds", mine) is not None


async def test_hundreds_of_portals_in_one_take_settle_without_exhausting_connections(
    redis: Any,
) -> None:
    queue = Queue(redis)
    policies = [policy(name="p", portal=1000 + i) for i in range(300)]
    for p in policies:
        await reconcile(queue, p)
        await queue.enqueue(item(f"cb-{p.portal_id}", portal=p.portal_id), p)
    completer = RecordingCompleter()
    dispatcher = Dispatcher(queue, completer, Metrics(CollectorRegistry()))
    await dispatcher.step()
    await dispatcher.wait_idle()
    assert len(completer.completed) == 300
    acked = sum([(await queue.stats(p)).acked for p in policies])
    assert acked == 300


class SlowCompleter(RecordingCompleter):
    """HubSpot answering in 200 ms: what a portal releases meanwhile must wait for one call."""

    async def complete(self, portal_id: int, items: Sequence[Released]) -> CompletionResult:
        await asyncio.sleep(0.2)
        return await super().complete(portal_id, items)


async def test_releases_made_while_a_call_is_out_go_together_in_the_next(redis: Any) -> None:
    """A portal's budget is about ten HubSpot calls a second: one call per take would cap a
    portal near ten completions a second whatever its policies allow."""
    p = policy(rate={"limit": 1000, "period": "1s", "burst": 1000})
    completer = SlowCompleter()
    queue = Queue(redis, lease_seconds=30)
    dispatcher = Dispatcher(queue, completer, Metrics(CollectorRegistry()), batch=1, queue_quota=1)
    await reconcile(queue, p)
    for i in range(30):
        await queue.enqueue(item(f"c-{i}"), p)
    for _ in range(30):  # thirty takes of one release each, faster than one HubSpot call
        assert await dispatcher.step() == 1
    await dispatcher.wait_idle()
    assert sorted(r.callback_id for r in completer.completed) == sorted(f"c-{i}" for i in range(30))
    assert len(completer.calls) <= 3, completer.calls
    assert completer.calls[0] == (7, 1)
    assert sum(n for _, n in completer.calls) == 30


async def test_a_take_leases_no_more_than_one_lease_completes(redis: Any) -> None:
    """One portal's sender makes one call at a time, each taking up to its 10 s deadline: with
    a 12 s lease (1.2 s kept as margin) one call of 100 fits, so a take leases 100 of the 350
    due, not the dispatcher's batch of 500; what fits grows with the lease, the calls a portal
    may have out at once, and shrinks to what its API budget allows."""
    p = policy(rate={"limit": 1000, "period": "1s", "burst": 1000})
    queue = Queue(redis, lease_seconds=12)
    dispatcher = Dispatcher(queue, RecordingCompleter(), Metrics(CollectorRegistry()))
    await reconcile(queue, p)
    for i in range(350):
        await queue.enqueue(item(f"c-{i}"), p)
    assert (dispatcher.batch, dispatcher.queue_quota) == (500, 100)
    dispatcher.queue_quota = 500
    assert dispatcher.lease_capacity == 100
    assert await dispatcher.step() == 100
    await dispatcher.wait_idle()
    assert (
        Dispatcher(Queue(redis, lease_seconds=60), RecordingCompleter(), Metrics()).lease_capacity
        == 500
    )
    two_out = Dispatcher(queue, RecordingCompleter(), Metrics(), portal_calls=2)
    assert two_out.lease_capacity == 200
    starved = Dispatcher(queue, RecordingCompleter(), Metrics(), portal_calls_per_second=0.05)
    assert starved.lease_capacity == 100  # 0.54 calls in 10.8 s: still one call
