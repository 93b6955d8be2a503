"""The operator's engine calls: on a real 3-node Redis Cluster (REDIS_CLUSTER=true deployments),
and what executions do while Redis lacks their policy's parameters."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.builders import item
from throttle.engine import keys
from throttle.engine.manifests import policy_from_spec
from throttle.engine.policy_index import PolicyIndex
from throttle.engine.queue import Queue, Released
from throttle.operator.owned_policies import AlreadyClaimed, OwnedPolicies


@pytest.mark.cluster
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


async def test_executions_wait_for_lost_parameters_and_go_once_restored(redis: Any) -> None:
    queue = Queue(redis)
    book = OwnedPolicies(queue)
    own = policy_from_spec(
        "own", {"portalId": 4100, "rate": {"limit": 2, "period": "1s", "burst": 0}}
    )
    default = policy_from_spec("default", {"portalId": 0, "rate": {"limit": 3, "period": "1s"}})
    for p in (own, default):
        await book.apply(f"ns/{p.name}", "", p)
    index = PolicyIndex(redis)  # what a webhook pod resolves with
    await index.load()
    webhook_own = index.resolve(4100, 1, "own")
    for_new_portal = index.resolve(4200, 1, None)  # the global default, applied to portal 4200
    assert webhook_own is not None
    assert for_new_portal is not None
    assert for_new_portal.key == "4200:default"

    await queue.enqueue(item("queued-before", portal=4100), webhook_own)
    await redis.delete(keys.params(own.key))  # Redis loses the policy's parameters
    await queue.enqueue(item("arrived-meanwhile", portal=4100), webhook_own)
    await queue.enqueue(item("first-of-portal", portal=4200), for_new_portal)

    # Held, not released unthrottled; and the webhook's enqueue wrote no parameters.
    assert (await queue.take()).released == []
    assert not await redis.exists(keys.params(own.key), keys.params("4200:default"))
    assert await queue.awaiting_params() == {own.key, "4200:default"}

    restored = await book.restore_missing()
    assert [e.policy.key for e in restored] == [own.key]
    assert await redis.hget(keys.params(own.key), "lim") == b"2"
    assert await redis.hget(keys.params("4200:default"), "lim") == b"3"
    assert await queue.awaiting_params() == set()

    # Released at the policies' rates: own lets one go per half second (no burst).
    taken: list[list[Released]] = []
    for step in range(3):
        queue.time_offset_ms = step * 500
        taken.append((await queue.take()).released)
    assert [sorted(r.callback_id for r in batch) for batch in taken] == [
        ["first-of-portal", "queued-before"],
        ["arrived-meanwhile"],
        [],
    ]
