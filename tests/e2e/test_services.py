"""The real services the suite depends on: Redis runs Lua, PostgreSQL keeps rows."""

from __future__ import annotations

import asyncpg

from throttle_dev.localenv import RedisServer


async def test_redis_runs_a_lua_script_atomically(redis: object) -> None:
    script = redis.register_script(  # type: ignore[attr-defined]
        "redis.call('RPUSH', KEYS[1], ARGV[1]); return redis.call('LLEN', KEYS[1])"
    )
    assert await script(keys=["q"], args=["a"]) == 1
    assert await script(keys=["q"], args=["b"]) == 2
    assert await redis.lrange("q", 0, -1) == [b"a", b"b"]  # type: ignore[attr-defined]


async def test_redis_keeps_data_across_restart_with_aof(redis_server: RedisServer) -> None:
    client = redis_server.client()
    await client.set("survives", "yes")
    await client.aclose()
    redis_server.restart()
    client = redis_server.client()
    assert await client.get("survives") == b"yes"
    await client.aclose()


async def test_postgres_round_trips_a_row(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TABLE t (id int primary key, note text)")
        await conn.execute("INSERT INTO t VALUES ($1, $2)", 1, "héllo")
        assert await conn.fetchval("SELECT note FROM t WHERE id = 1") == "héllo"
    finally:
        await conn.close()
