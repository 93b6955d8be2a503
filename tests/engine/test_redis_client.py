"""Every component's Redis client comes from one factory, and gives up on a silent Redis."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from pathlib import Path

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from throttle.engine import redis_client as factory
from throttle.settings import Settings

PACKAGE = Path(factory.__file__).resolve().parents[1]


def _settings(url: str, cluster: bool = False) -> Settings:
    return Settings(_env_file=None, redis_url=url, redis_cluster=cluster)  # type: ignore[call-arg]


def test_no_component_builds_its_own_client() -> None:
    builds = re.compile(r"\b(Redis|RedisCluster)(\.from_url)?\(")
    found = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "redis_client.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if builds.search(line)
    ]
    assert found == []


def test_cluster_client_has_the_same_timeouts() -> None:
    client = factory.redis_client(_settings("redis://127.0.0.1:7000/0", cluster=True))
    kwargs = client.get_connection_kwargs()
    assert kwargs["socket_timeout"] == factory.SOCKET_TIMEOUT_S
    assert kwargs["socket_connect_timeout"] == factory.SOCKET_CONNECT_TIMEOUT_S


async def test_a_redis_that_never_answers_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        client = factory.redis_client(_settings(f"redis://127.0.0.1:{port}/0"))
        started = time.monotonic()
        try:
            with pytest.raises(RedisTimeoutError):
                await asyncio.wait_for(client.get("x"), factory.SOCKET_TIMEOUT_S + 5)
        finally:
            await client.aclose()
    assert time.monotonic() - started < factory.SOCKET_TIMEOUT_S + 2
