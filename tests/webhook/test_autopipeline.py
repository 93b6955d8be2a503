"""AutoPipeline on real Redis: batching keeps each caller's own reply, error and NOSCRIPT retry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from throttle.webhook_service.autopipeline import AutoPipeline

ECHO = "return {KEYS[1], ARGV[1]}"
FAIL_ON_X = "if ARGV[1] == 'x' then return redis.error_reply('boom') end return ARGV[1]"


@pytest.fixture
async def auto(redis: Any) -> AsyncIterator[AutoPipeline]:
    pipeline = AutoPipeline(redis)
    yield pipeline
    await pipeline.aclose()


async def test_concurrent_calls_each_get_their_own_reply(auto: AutoPipeline, redis: Any) -> None:
    script = auto.register_script(ECHO)
    replies = await asyncio.gather(*(script(keys=[f"k{i}"], args=[i]) for i in range(300)))
    assert replies == [[f"k{i}".encode(), str(i).encode()] for i in range(300)]


async def test_an_error_reaches_only_its_caller(auto: AutoPipeline, redis: Any) -> None:
    script = auto.register_script(FAIL_ON_X)
    results = await asyncio.gather(
        script(args=["a"]), script(args=["x"]), script(args=["b"]), return_exceptions=True
    )
    assert results[0] == b"a"
    assert isinstance(results[1], ResponseError)
    assert results[2] == b"b"


async def test_scripts_reload_after_a_flush(auto: AutoPipeline, redis: Any) -> None:
    script = auto.register_script(ECHO)
    assert await script(keys=["a"], args=[1]) == [b"a", b"1"]
    await redis.script_flush()
    replies = await asyncio.gather(*(script(keys=["b"], args=[i]) for i in range(20)))
    assert replies == [[b"b", str(i).encode()] for i in range(20)]


async def test_a_cancelled_caller_does_not_break_the_batch(auto: AutoPipeline, redis: Any) -> None:
    script = auto.register_script(ECHO)
    doomed = asyncio.ensure_future(script(keys=["a"], args=[1]))
    survivor = asyncio.ensure_future(script(keys=["b"], args=[2]))
    await asyncio.sleep(0)
    doomed.cancel()
    assert await survivor == [b"b", b"2"]
    with pytest.raises(asyncio.CancelledError):
        await doomed


async def test_connection_failure_reaches_every_waiter(redis_server: Any) -> None:
    from redis.asyncio import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    broken = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    auto = AutoPipeline(broken)
    script = auto.register_script(ECHO)
    results = await asyncio.gather(
        *(script(keys=["a"], args=[i]) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    await auto.aclose()


async def test_selects_the_database_and_authenticates(tmp_path: Any) -> None:
    from redis.asyncio import Redis

    from throttle_dev.localenv import RedisServer

    server = RedisServer(tmp_path / "auth").start()
    server.sync_client().config_set("requirepass", "s3cret-pw")
    try:
        url = f"redis://:s3cret-pw@127.0.0.1:{server.port}/3"
        auto = AutoPipeline(Redis.from_url(url))
        setter = auto.register_script("redis.call('SET', KEYS[1], ARGV[1]) return 1")
        assert await setter(keys=["k"], args=["v"]) == 1
        check = Redis.from_url(url)
        assert await check.get("k") == b"v"
        plain = Redis.from_url(f"redis://:s3cret-pw@127.0.0.1:{server.port}/0")
        assert await plain.get("k") is None  # written to db 3, not db 0
        await plain.aclose()
        await check.aclose()
        await auto.aclose()

        wrong = AutoPipeline(Redis.from_url(f"redis://:wrong@127.0.0.1:{server.port}/0"))
        with pytest.raises(RedisConnectionError):
            await wrong.register_script(ECHO)(keys=["a"], args=[1])
        await wrong.aclose()
    finally:
        server.stop()


async def test_reconnects_after_a_redis_restart(tmp_path: Any) -> None:
    from redis.asyncio import Redis

    from throttle_dev.localenv import RedisServer

    server = RedisServer(tmp_path / "restart").start()
    try:
        auto = AutoPipeline(Redis.from_url(server.url))
        script = auto.register_script(ECHO)
        assert await script(keys=["a"], args=[1]) == [b"a", b"1"]
        server.restart()
        outcomes = []
        for i in range(3):
            try:
                outcomes.append(await script(keys=["b"], args=[i]))
            except RedisConnectionError:
                outcomes.append("lost")
        # At most the first call meets the dead connection; then it reconnects (and reloads).
        assert outcomes[1:] == [[b"b", b"1"], [b"b", b"2"]]
        await auto.aclose()
    finally:
        server.stop()


async def test_a_silent_redis_times_out_every_waiter() -> None:
    from redis.asyncio import Redis

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass  # read commands, never answer

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        auto = AutoPipeline(Redis(host="127.0.0.1", port=port, socket_timeout=0.5))
        script = auto.register_script(ECHO)
        started = asyncio.get_running_loop().time()
        results = await asyncio.gather(
            *(script(keys=["a"], args=[i]) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, RedisConnectionError) for r in results), results
        assert asyncio.get_running_loop().time() - started < 3
        await auto.aclose()
    finally:
        server.close()
        await server.wait_closed()
