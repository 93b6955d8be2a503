"""Every component's Redis client comes from one factory, and gives up on a silent Redis."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from throttle.engine import redis_client as factory
from throttle.settings import Settings
from throttle_dev.localenv import RedisCluster as RedisClusterServers
from throttle_dev.localenv import RedisServer, free_port

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


@pytest.fixture
def redis_at(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start a Redis of its own with the given persistence (stopped after the test)."""
    started: list[RedisServer] = []

    def start(appendfsync: str = "always", *extra: str) -> RedisServer:
        server = RedisServer(
            tmp_path / f"redis{len(started)}",
            appendonly=True,
            appendfsync=appendfsync,
            extra_args=list(extra),
        )
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


async def test_strict_durability_accepts_a_redis_that_fsyncs_every_write(
    redis_at: Callable[..., RedisServer],
) -> None:
    client = factory.redis_client(_settings(redis_at("always").url))
    try:
        nodes = await factory.require_strict_durability(client)
    finally:
        await client.aclose()
    assert nodes == {"REDIS_URL": {**nodes["REDIS_URL"], **factory.STRICT_PERSISTENCE}}


async def test_strict_durability_refuses_everysec_naming_setting_and_config(
    redis_server: RedisServer,
) -> None:
    client = factory.redis_client(_settings(redis_server.url))  # the session's: everysec
    try:
        with pytest.raises(factory.DurabilityError) as refused:
            await factory.require_strict_durability(client)
    finally:
        await client.aclose()
    message = str(refused.value)
    assert "REDIS_DURABILITY=strict" in message
    assert "REDIS_URL has appendonly yes, appendfsync everysec" in message
    assert "appendfsync always" in message


async def test_strict_durability_refuses_when_config_cannot_be_read(
    redis_at: Callable[..., RedisServer],
) -> None:
    """Managed Redis often renames or disables CONFIG: then it cannot be shown, so no start."""
    server = redis_at("always", "--rename-command", "CONFIG", "")
    client = factory.redis_client(_settings(server.url))
    try:
        with pytest.raises(factory.DurabilityError) as refused:
            await factory.require_strict_durability(client)
    finally:
        await client.aclose()
    assert "CONFIG GET was refused" in str(refused.value)
    assert "REDIS_DURABILITY=standard" in str(refused.value)
    unreachable = factory.redis_client(_settings(f"redis://127.0.0.1:{free_port()}/0"))
    try:
        with pytest.raises(factory.DurabilityError, match="unreachable"):
            await factory.require_strict_durability(unreachable)
    finally:
        await unreachable.aclose()


async def test_strict_durability_checks_every_master_of_a_cluster(
    redis_cluster: RedisClusterServers,
) -> None:
    masters = [node.sync_client() for node in redis_cluster.nodes]
    for master in masters:
        master.config_set("appendonly", "yes")
        master.config_set("appendfsync", "always")
    client = factory.redis_client(_settings(redis_cluster.urls[0], cluster=True))
    try:
        assert len(await factory.require_strict_durability(client)) == 3
        masters[2].config_set("appendfsync", "everysec")
        with pytest.raises(factory.DurabilityError) as refused:
            await factory.require_strict_durability(client)
    finally:
        await client.aclose()
        for master in masters:
            master.config_set("appendfsync", "everysec")
            master.config_set("appendonly", "no")
            master.close()
    assert f"127.0.0.1:{redis_cluster.nodes[2].port} has appendonly yes, appendfsync everysec" in (
        str(refused.value)
    )
    for node in redis_cluster.nodes[:2]:
        assert f"127.0.0.1:{node.port}" not in str(refused.value)
