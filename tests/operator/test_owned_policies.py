"""The operator's engine calls on a real 3-node Redis Cluster (REDIS_CLUSTER=true deployments)."""

from __future__ import annotations

from typing import Any

import pytest

from throttle.engine import keys
from throttle.engine.manifests import policy_from_spec
from throttle.engine.queue import Queue
from throttle.operator.owned_policies import AlreadyClaimed, OwnedPolicies

pytestmark = pytest.mark.cluster


async def test_apply_check_restore_retire_on_redis_cluster(redis_cluster: Any) -> None:
    client = redis_cluster.client()
    try:
        await client.flushall()
        owned = OwnedPolicies(Queue(client))
        policies = [
            policy_from_spec(f"p{i}", {"portalId": 7000 + i, "rate": {"limit": 5}})
            for i in range(12)  # spread over shards, hence over the three nodes
        ]
        for p in policies:
            assert (await owned.apply(f"ns/{p.name}", "", p)).written
        assert not (await owned.apply("ns/p0", "", policies[0])).written  # idempotent
        assert await owned.missing() == []

        # Lose some parameters and one registry entry: exactly those come back.
        await client.delete(keys.params(policies[3].key))
        await client.delete(keys.params(policies[7].key))
        await client.hdel(keys.REGISTRY, policies[9].key)
        restored = await owned.restore_missing()
        assert sorted(e.policy.name for e in restored) == ["p3", "p7", "p9"]
        assert await owned.missing() == []

        with pytest.raises(AlreadyClaimed):
            await owned.apply("other/p1", "9999", policies[1])  # newer source, same policy
        assert await owned.retire(policies[0], "Drain") == 0  # nothing queued: gone at once
        assert not await client.exists(keys.params(policies[0].key))
        assert owned.owner_of(policies[0].key) is None
        figures = await owned.figures(policies[1])
        assert figures.depth == 0
    finally:
        await client.aclose()
