"""The operator's engine calls on a real 3-node Redis Cluster (REDIS_CLUSTER=true deployments)."""

from __future__ import annotations

from typing import Any

import pytest

from throttle.engine import keys
from throttle.engine.manifests import policy_from_spec
from throttle.engine.queue import Queue
from throttle.operator.book import PolicyBook, PolicyConflict

pytestmark = pytest.mark.cluster


async def test_apply_check_restore_retire_on_redis_cluster(redis_cluster: Any) -> None:
    client = redis_cluster.client()
    try:
        await client.flushall()
        book = PolicyBook(Queue(client))
        policies = [
            policy_from_spec(f"p{i}", {"portalId": 7000 + i, "rate": {"limit": 5}})
            for i in range(12)  # spread over shards, hence over the three nodes
        ]
        for p in policies:
            assert (await book.apply(f"ns/{p.name}", "", p)).written
        assert not (await book.apply("ns/p0", "", policies[0])).written  # idempotent
        assert await book.missing() == []

        # Lose some parameters and one registry entry: exactly those come back.
        await client.delete(keys.params(policies[3].key))
        await client.delete(keys.params(policies[7].key))
        await client.hdel(keys.REGISTRY, policies[9].key)
        restored = await book.restore_missing()
        assert sorted(e.policy.name for e in restored) == ["p3", "p7", "p9"]
        assert await book.missing() == []

        with pytest.raises(PolicyConflict):
            await book.apply("other/p1", "9999", policies[1])  # newer source, same policy
        assert await book.retire(policies[0], "Drain") == 0  # nothing queued: gone at once
        assert not await client.exists(keys.params(policies[0].key))
        assert book.owner_of(policies[0].key) is None
        figures = await book.figures(policies[1])
        assert figures.depth == 0
    finally:
        await client.aclose()
