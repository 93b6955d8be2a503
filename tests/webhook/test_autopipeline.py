"""AutoPipeline on real Redis: batching keeps each caller's own reply, error and NOSCRIPT retry."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ResponseError

from throttle.webhook_service.autopipeline import AutoPipeline

ECHO = "return {KEYS[1], ARGV[1]}"
FAIL_ON_X = "if ARGV[1] == 'x' then return redis.error_reply('boom') end return ARGV[1]"


async def test_concurrent_calls_each_get_their_own_reply(redis: Any) -> None:
    auto = AutoPipeline(redis)
    script = auto.register_script(ECHO)
    replies = await asyncio.gather(*(script(keys=[f"k{i}"], args=[i]) for i in range(300)))
    assert replies == [[f"k{i}".encode(), str(i).encode()] for i in range(300)]


async def test_an_error_reaches_only_its_caller(redis: Any) -> None:
    auto = AutoPipeline(redis)
    script = auto.register_script(FAIL_ON_X)
    results = await asyncio.gather(
        script(args=["a"]), script(args=["x"]), script(args=["b"]), return_exceptions=True
    )
    assert results[0] == b"a"
    assert isinstance(results[1], ResponseError)
    assert results[2] == b"b"


async def test_scripts_reload_after_a_flush(redis: Any) -> None:
    auto = AutoPipeline(redis)
    script = auto.register_script(ECHO)
    assert await script(keys=["a"], args=[1]) == [b"a", b"1"]
    await redis.script_flush()
    replies = await asyncio.gather(*(script(keys=["b"], args=[i]) for i in range(20)))
    assert replies == [[b"b", str(i).encode()] for i in range(20)]


async def test_a_cancelled_caller_does_not_break_the_batch(redis: Any) -> None:
    auto = AutoPipeline(redis)
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
    assert all(isinstance(r, RedisConnectionError | OSError) for r in results)
    await auto.aclose()
