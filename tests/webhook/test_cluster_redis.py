"""The webhook on a real 3-node Redis Cluster: the same answers, readiness across nodes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.webhook import StartWebhook, execution, policy

pytestmark = pytest.mark.cluster


async def test_actions_and_readiness_on_redis_cluster(
    start_webhook: StartWebhook, redis_cluster: Any
) -> None:
    client = redis_cluster.client()
    await client.flushall()
    await client.aclose()
    webhook = await start_webhook(redis_url=redis_cluster.urls[0], redis_cluster=True)
    p = await webhook.add_policy(policy(expiration="P1D"))
    first = await webhook.post_action(execution("cb-1"))
    again = await webhook.post_action(execution("cb-1"))
    assert (
        first
        == again
        == (
            200,
            {"outputFields": {"hs_execution_state": "BLOCK", "hs_expiration_duration": "P1D"}},
        )
    )
    assert await webhook.depth(p) == 1
    ready = await webhook.client.get("/readyz")
    assert ready.status == 200, await ready.text()
