"""A portal's data purged — on request and after the uninstall grace period — against real Redis
and PostgreSQL: its tokens, queued and in-flight executions (never released afterwards), history
and buffered events go; another portal's stay; each purge is recorded once."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry

from tests.fixtures.builders import item, policy
from throttle.dispatcher.history_writer import HistoryWriter
from throttle.engine import keys
from throttle.engine.queue import Queue
from throttle.engine.registry import portal_state, reconcile
from throttle.history.pool import create_pool
from throttle.history.portal_purge import history_rows, portals_due_for_purge, purge_portal
from throttle.hubspot.client import TokenGrant
from throttle.hubspot.tokens import TokenStore, delete_portal_tokens
from throttle.metrics import Metrics

GONE, KEPT = 7, 8


async def _portal_with_everything(queue: Queue, store: TokenStore, portal: int) -> None:
    """Tokens, a policy with queued executions, one in flight (leased), one the global
    default's copy would make... and history rows written by the history writer."""
    await store.save(portal, TokenGrant("access-" + str(portal), "refresh", 1800), None, "x.com")
    p = policy("orders", portal, rate={"limit": 2, "period": "1h", "burst": 1})
    await reconcile(queue, p)
    for n in range(5):
        await queue.enqueue(item(f"cb-{portal}-{n}", portal), p)
    taken = (await queue.take()).released
    assert len(taken) == 2  # in flight, leased to a dispatcher that is still sending


async def _write_history(redis: Any, database_url: str) -> HistoryWriter:
    writer = HistoryWriter(redis, lambda: create_pool(database_url), Metrics(CollectorRegistry()))
    await writer.ensure_groups()
    while await writer.step():
        pass
    return writer


def _portal_keys(all_keys: list[bytes], portal: int) -> list[str]:
    return [k.decode() for k in all_keys if f":{portal}:" in k.decode()]


async def test_purge_on_request_deletes_the_portal_and_nothing_else(
    redis: Any, pool: Any, store: TokenStore, database_url: str
) -> None:
    queue = Queue(redis, lease_seconds=1)
    for portal in (GONE, KEPT):
        await _portal_with_everything(queue, store, portal)
    writer = await _write_history(redis, database_url)
    await queue.enqueue(item(f"cb-{GONE}-late", GONE), policy("orders", GONE))  # still buffered
    assert await history_rows(pool, GONE) == 5
    plan = await portal_state(queue, GONE)
    assert (plan.policies, plan.executions) == ((f"{GONE}:orders",), 6)

    record = await purge_portal(pool, queue, GONE, "request", delete_portal_tokens)
    assert (record.policies, record.executions_dropped, record.history_rows, record.tokens) == (
        1,
        6,
        5,
        1,
    )

    # Redis: not one key of the portal, not one lease, not one buffered event
    assert _portal_keys(await redis.keys("*"), GONE) == []
    leases = [
        m.decode() for s in range(keys.SHARDS) for m in await redis.zrange(keys.leases(s), 0, -1)
    ]
    assert not [m for m in leases if m.startswith(f"{GONE}:")]
    assert await redis.hget(keys.REGISTRY, f"{GONE}:orders") is None
    # ...and nothing of it is released afterwards, not even once the leases would have run out
    await asyncio.sleep(1.2)
    await queue.reap_expired_leases()
    released = (await queue.take()).released
    assert {r.portal_id for r in released} <= {KEPT}
    # the history writer cannot write its history back
    await writer.step()
    assert await history_rows(pool, GONE) == 0
    assert await store.load(GONE) is None
    installation = await store.installation(GONE)
    assert installation is not None
    assert installation.hub_domain is None

    # the other portal is untouched
    assert await history_rows(pool, KEPT) == 5
    assert (await store.load(KEPT)) is not None
    assert (await portal_state(queue, KEPT)).executions == 5

    rows = await pool.fetch("SELECT portal_id, reason, executions_dropped FROM portal_purges")
    assert [tuple(r) for r in rows] == [(GONE, "request", 6)]
    await writer.close()


async def test_uninstalled_portals_are_purged_after_the_grace_period_once(
    redis: Any, pool: Any, store: TokenStore, database_url: str
) -> None:
    queue = Queue(redis)
    for portal in (GONE, KEPT):
        await _portal_with_everything(queue, store, portal)
    writer = await _write_history(redis, database_url)
    await store.mark_uninstalled(GONE, "uninstalled in HubSpot")
    writer.uninstall_grace_days = 1.0
    await writer.prune_once()
    assert await history_rows(pool, GONE) == 5  # within the grace period: restorable, kept
    assert await portals_due_for_purge(pool, 1.0) == []

    writer.uninstall_grace_days = 0.0
    await writer.prune_once()
    assert await history_rows(pool, GONE) == 0
    assert _portal_keys(await redis.keys("*"), GONE) == []
    assert await history_rows(pool, KEPT) == 5
    await writer.prune_once()  # purged and recorded once, not every hour
    rows = await pool.fetch("SELECT portal_id, reason FROM portal_purges")
    assert [tuple(r) for r in rows] == [(GONE, "uninstalled")]
    await writer.close()
