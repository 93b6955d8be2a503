"""Take cost: what releasing one action costs Throttle in Redis, against a well-known limiter.

Same Redis server, same run, same client library (redis-py asyncio), one connection each:
- baseline: the `limits` package's Redis moving-window limiter (`MovingWindowRateLimiter.hit`,
  one Lua call per hit) — a pure limiter: it holds no queue, no lease, no history;
- Throttle: the engine's `take` (Lua: rate state, queue pop, lease, history event, next due time)
  releasing items already queued, one per call (like a hit) and in batches (as the dispatcher
  runs it), without and with the `ack` every completed action needs.

Reported per released action: wall time (µs), client round trips, and Redis commands executed
(INFO commandstats, commands run inside scripts included). Never pass/fail: it prints a table.

    .venv/bin/python bench/take_cost.py [--actions 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from throttle.engine import keys
from throttle.engine.policy import Policy
from throttle.engine.queue import Queue, QueueItem
from throttle_dev.localenv import RedisServer


async def executed(redis: Any) -> int:
    """Commands Redis executed so far, including those run inside scripts."""
    info = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in info.items() if k.startswith("cmdstat_"))


async def script_usec(redis: Any) -> int:
    """Redis CPU time spent in scripts (EVALSHA/EVAL), the server side of either limiter."""
    info = await redis.info("commandstats")
    return sum(int(info.get(k, {}).get("usec", 0)) for k in ("cmdstat_evalsha", "cmdstat_eval"))


async def measure(
    redis: Any,
    releases: int,
    run: Callable[[], Awaitable[int]],
    empty_cost: tuple[float, float] = (0.0, 0.0),
) -> tuple[float, float, float, float, int]:
    """Call `run` until `releases` are released: µs, round trips and commands per release.

    Only calls that released something are timed: the engine schedules a queue's next take at
    millisecond resolution, so a loop that spins faster than that gets empty answers a real
    dispatcher never asks for (it sleeps until the due time). The commands those empty calls
    ran (`empty_cost` each: commands, Redis µs; calibrated) are subtracted.
    """
    before = await executed(redis)
    usec_before = await script_usec(redis)
    done = calls = empty = 0
    busy = 0.0
    while done < releases:
        started = time.perf_counter()
        got = await run()
        if got == 0:
            empty += 1
            if empty > releases * 50:
                break
            continue
        busy += time.perf_counter() - started
        calls += 1
        done += got
    # the INFO call that reads the counters is itself counted once
    ran = await executed(redis) - before - 2 - empty * empty_cost[0]
    server = await script_usec(redis) - usec_before - empty * empty_cost[1]
    done = max(done, 1)
    return busy / done * 1e6, server / done, calls / done, ran / done, done


async def empty_take_cost(redis: Any, queue: Queue) -> tuple[float, float]:
    """(commands, Redis µs) of one take on a shard with nothing due (subtracted from busy loops)."""
    shard = keys.shard_of("0:nothing-here")
    before, usec = await executed(redis), await script_usec(redis)
    for _ in range(200):
        await queue.take([shard], max_items=1, queue_quota=1)
    commands = (await executed(redis) - before - 2) / 200
    return commands, (await script_usec(redis) - usec) / 200


async def fill(queue: Queue, policy: Policy, count: int) -> None:
    """Queue `count` executions (pipelined enqueue calls, as many webhooks would)."""
    now = time.time()
    for start in range(0, count, 50):
        await asyncio.gather(
            *(
                queue.enqueue(
                    QueueItem(
                        callback_id=f"cb-{policy.name}-{i}",
                        portal_id=policy.portal_id,
                        action_definition_id=1,
                        workflow_id=1,
                        object_type="CONTACT",
                        object_id=str(i),
                        policy=policy.name,
                        received_at=now,
                    ),
                    policy,
                )
                for i in range(start, min(start + 50, count))
            )
        )


async def bench(actions: int) -> list[tuple[str, str, float, float, float, float, int]]:
    import redis.asyncio as aioredis
    from limits import RateLimitItemPerSecond
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import MovingWindowRateLimiter

    rows: list[tuple[str, str, float, float, float, float, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = RedisServer(Path(tmp) / "redis").start()
        try:
            redis: Any = aioredis.Redis.from_url(redis_server.url)
            # --- baseline: limits' moving window -----------------------------------------------
            storage = RedisStorage(f"async+{redis_server.url}", implementation="redispy")
            limiter = MovingWindowRateLimiter(storage)
            item = RateLimitItemPerSecond(10_000_000)
            await limiter.hit(item, "warm")

            async def hit() -> int:
                return 1 if await limiter.hit(item, "bench") else 0

            measured = await measure(redis, actions, hit)
            rows.append(("limits MovingWindowRateLimiter", "hit per action", *measured))

            # --- Throttle: take from a queue ----------------------------------------------------
            queue = Queue(redis)
            empty_cost = await empty_take_cost(redis, queue)
            for mode, batch, with_ack in (
                ("take, 1 per call", 1, False),
                ("take, 100 per call", 100, False),
                ("take + ack, 100 per call", 100, True),
            ):
                policy = Policy.model_validate(
                    {
                        "name": f"bench-{batch}-{int(with_ack)}",
                        "portalId": 1,
                        # burst = limit: the rate never binds, so every call releases a full batch
                        "rate": {"limit": 1_000_000, "period": "1s", "burst": 1_000_000},
                    }
                )
                await queue.apply_policy(policy)
                await fill(queue, policy, actions)
                shard = keys.shard_of(policy.key)

                async def take(
                    batch: int = batch, with_ack: bool = with_ack, shard: int = shard
                ) -> int:
                    result = await queue.take([shard], max_items=batch, queue_quota=batch)
                    if with_ack and result.released:
                        await queue.ack(result.released)
                    return len(result.released)

                us, server, trips, cmds, done = await measure(redis, actions, take, empty_cost)
                if with_ack:
                    trips *= 2  # one take and one ack call per batch
                rows.append(("Throttle take.lua", mode, us, server, trips, cmds, done))
            await redis.aclose()
        finally:
            redis_server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actions", type=int, default=20_000, help="releases per row")
    args = parser.parse_args()
    rows = asyncio.run(bench(args.actions))
    table = Table(title=f"Take cost per released action ({args.actions} releases per row)")
    columns = ("limiter", "mode", "µs/action", "Redis µs/action", "trips/action", "cmds/action")
    for column in columns:
        table.add_column(column, justify="left" if column in ("limiter", "mode") else "right")
    baseline = rows[0][2]
    table.add_column("µs vs baseline", justify="right")
    for name, mode, us, server, trips, cmds, _done in rows:
        table.add_row(
            name,
            mode,
            f"{us:.1f}",
            f"{server:.2f}",
            f"{trips:.3f}",
            f"{cmds:.2f}",
            f"{us / baseline:.2f}x",
        )
    console = Console(width=120)
    console.print(table)
    console.print(
        f"machine: {platform.machine()}, {platform.python_version()}, "
        "single redis-server on loopback, no AOF"
    )


if __name__ == "__main__":
    main()
