"""Engine fixtures: the same tests on a single Redis and on the 3-node Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from throttle.engine.queue import Queue


@pytest.fixture(params=["single", pytest.param("cluster", marks=pytest.mark.cluster)])
async def engine_redis(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A flushed async client: a plain Redis, or a RedisCluster client (all keys hash-tagged)."""
    if request.param == "single":
        client = request.getfixturevalue("redis_server").client()
    else:
        client = request.getfixturevalue("redis_cluster").client()
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def queue(engine_redis: Any) -> Queue:
    return Queue(engine_redis, lease_seconds=30)
