"""Engine fixtures: the same tests on a single Redis and on the 3-node Redis Cluster."""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from throttle.localenv import RedisCluster, RedisServer, ServiceError, find_binary
from throttle.queue import Queue


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """The 3-node cluster, started with ports Redis Cluster accepts (<= 55535: the bus port is
    +10000) and a readiness check that works with redis-py 8's parsed CLUSTER INFO. Overrides
    the shared fixture for the engine tests until tests/fixtures/services.py does the same."""
    workdir = Path(tmp_path_factory.mktemp("engine-cluster"))
    ports = random.sample(range(20000, 30000), 3)
    cluster = RedisCluster(workdir)
    cluster.nodes = [
        RedisServer(workdir / f"node{i}", port=port, cluster=True).start()
        for i, port in enumerate(ports)
    ]
    subprocess.run(
        [
            find_binary("redis-cli"),
            "--cluster",
            "create",
            *(f"127.0.0.1:{p}" for p in ports),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    deadline = time.monotonic() + 30
    for node in cluster.nodes:
        while node.sync_client().cluster("INFO").get("cluster_state") != "ok":
            if time.monotonic() > deadline:
                raise ServiceError("Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
    yield cluster
    cluster.stop()


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
