"""The per-portal HubSpot budget in real Redis: counted across pods, held after a 429."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from throttle.hubspot.budget import PortalBudget
from throttle.settings import parse_budget_overrides as parse_overrides


async def test_budget_counts_calls_in_the_rolling_window(redis: Any) -> None:
    budget = PortalBudget(redis, limit=5, window_s=1.0, max_in_flight=10)
    grants = [await budget.try_take(1) for _ in range(6)]
    assert [g.granted for g in grants] == [True] * 5 + [False]
    # Until the oldest call leaves the window, plus the 1 ms that puts it strictly outside.
    assert 0 < grants[-1].wait_seconds <= 1.001
    assert (await budget.try_take(2)).granted  # another portal has its own budget
    await asyncio.sleep(grants[-1].wait_seconds)
    assert (await budget.try_take(1)).granted


async def test_hold_blocks_every_pod_and_only_grows(redis: Any, redis_server: Any) -> None:
    other_pod = redis_server.client()
    try:
        budget_a = PortalBudget(redis, limit=100, window_s=10.0)
        budget_b = PortalBudget(other_pod, limit=100, window_s=10.0)
        assert await budget_a.hold(7, 2.0) == 2.0
        assert await budget_b.hold(7, 0.5) > 1.9  # a shorter hold does not shorten it
        grant = await budget_b.try_take(7)
        assert not grant.granted
        assert 1.5 < grant.wait_seconds <= 2.0
        assert (await budget_b.take(7, max_wait_s=0.1)).granted is False
    finally:
        await other_pod.aclose()


async def test_three_pods_never_exceed_the_budget(redis: Any, redis_server: Any) -> None:
    """Many concurrent takers on three clients: no 0.5 s window ever holds more than 20 calls.

    Judged on Redis' clock, as HubSpot would count them: MONITOR timestamps every script call
    as Redis runs it. (When a taker's own clock read the grant, a loaded machine's late event
    loop squeezed grants together that Redis had spread out.)"""
    clients = [redis] + [redis_server.client() for _ in range(2)]
    budgets = [PortalBudget(c, limit=20, window_s=0.5, max_in_flight=3) for c in clients]
    granted: list[str] = []
    watcher = redis_server.client()
    ran_at: dict[str, float] = {}
    end_marker = uuid.uuid4().hex

    async def watch(ready: asyncio.Event) -> None:
        async with watcher.monitor() as monitor:
            ready.set()
            while True:
                seen = await monitor.next_command()
                words = seen["command"].split()
                if words[:2] == ["ECHO", end_marker]:
                    return
                if words and words[0] == "EVALSHA" and len(words) > 8:
                    ran_at[words[8]] = seen["time"]  # ARGV[3], the call id

    async def taker(budget: PortalBudget) -> None:
        end = time.monotonic() + 1.6
        while time.monotonic() < end:
            grant = await budget.take(9, max_wait_s=0.6)
            if grant.granted:
                granted.append(grant.call_id)
                await budget.release(9, grant)

    ready = asyncio.Event()
    monitoring = asyncio.create_task(watch(ready))
    try:
        await ready.wait()
        await asyncio.gather(*(taker(b) for b in budgets for _ in range(4)))
        await redis.echo(end_marker)
        await asyncio.wait_for(monitoring, 30)
    finally:
        monitoring.cancel()
        for c in [*clients[1:], watcher]:
            await c.aclose()
    assert len(granted) >= 40
    times = sorted(ran_at[call_id] for call_id in granted)
    for i, start in enumerate(times):
        # The script counts whole milliseconds (a call 499.9 ms after another may fall in the
        # next window): judge the window 1 ms short.
        in_window = [t for t in times[i:] if t < start + 0.5 - 0.001]
        assert len(in_window) <= 20, [round(t - start, 4) for t in in_window][-4:]


def test_overrides_parse_and_refuse_nonsense() -> None:
    assert parse_overrides("1:50, 2:10") == {1: 50, 2: 10}
    assert parse_overrides("") == {}
    with pytest.raises(ValueError, match="portal:calls"):
        parse_overrides("abc")
    with pytest.raises(ValueError, match="1 to 110"):
        parse_overrides("1:500")


async def test_calls_in_flight_are_capped_across_pods(redis: Any, redis_server: Any) -> None:
    other_pod = redis_server.client()
    try:
        a = PortalBudget(redis, limit=100, window_s=10.0, max_in_flight=1, lease_s=0.5)
        b = PortalBudget(other_pod, limit=100, window_s=10.0, max_in_flight=1, lease_s=0.5)
        first = await a.try_take(3)
        assert first.granted
        busy = await b.try_take(3)
        assert not busy.granted
        assert busy.wait_seconds == 0.01
        assert (await b.try_take(4)).granted  # other portals are not affected
        await a.release(3, first)
        second = await b.try_take(3)
        assert second.granted
        # A pod that dies mid-call (never releases) frees the slot when the lease ends.
        started = time.monotonic()
        third = await a.take(3, max_wait_s=2.0)
        assert third.granted
        assert 0.3 < time.monotonic() - started < 1.0
    finally:
        await other_pod.aclose()


@pytest.mark.cluster
async def test_budget_and_token_lock_work_on_redis_cluster(redis_cluster: Any) -> None:
    """All keys of a portal share one hash tag, so the scripts run unchanged on a cluster."""
    from throttle.engine import keys

    client = redis_cluster.client()
    try:
        budget = PortalBudget(client, limit=2, window_s=1.0, max_in_flight=1)
        grant = await budget.try_take(31)
        assert grant.granted
        assert not (await budget.try_take(31)).granted  # one in flight
        await budget.release(31, grant)
        await budget.hold(31, 0.3)
        held = await budget.try_take(31)
        assert not held.granted
        assert 0.1 < held.wait_seconds <= 0.3
        lock = client.lock(keys.hubspot_token_lock(31), timeout=5, blocking_timeout=1)
        async with lock:
            assert await client.exists(keys.hubspot_token_lock(31))
    finally:
        await client.aclose()
