"""The Redis layout version: stamped, migrated forward once under a lock, never misread.

The migrations here are the tests' own (a key renamed, as a real layout change would): the
registry `MIGRATIONS` is passed to `ensure_layout` the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from throttle.engine import keys
from throttle.engine.layout import (
    CURRENT_LAYOUT,
    MIGRATIONS,
    LayoutMigration,
    LayoutState,
    LayoutTooNew,
    ensure_layout,
    ensure_layout_when_reachable,
    read_layout,
)
from throttle.engine.policy import Policy, Rate
from throttle.engine.queue import Queue, QueueItem
from throttle.engine.registry import reconcile

OLD_KEY = "throttle:{reg}:old-name"
NEW_KEY = "throttle:{reg}:new-name"


def _rename(calls: list[int], pause_s: float = 0.0) -> LayoutMigration:
    async def apply(redis: Any) -> None:
        calls.append(1)
        await asyncio.sleep(pause_s)  # a slow migration: a second pod arrives meanwhile
        value = await redis.get(OLD_KEY)
        if value is not None:  # idempotent: a rerun after a crash finds it done
            await redis.set(NEW_KEY, value)
            await redis.delete(OLD_KEY)

    return LayoutMigration(2, "old-name renamed new-name", readable_by=1, apply=apply)


async def test_release_0_1_0_data_is_layout_1_and_gets_stamped(engine_redis: Any) -> None:
    """Data that release 0.1.0 wrote (no layout key) is layout 1; the first start records it,
    and the queued execution is still there, untouched."""
    queue = Queue(engine_redis)
    policy = Policy(portal_id=7, name="p", rate=Rate(limit=1))
    await reconcile(queue, policy)
    await queue.enqueue(QueueItem("cb-1", 7, 1, None, "CONTACT", "1"), policy)
    assert await read_layout(engine_redis) == LayoutState(1, 1, stamped=False)

    assert await ensure_layout(engine_redis) == [m.version for m in MIGRATIONS]
    state = await read_layout(engine_redis)
    assert (state.version, state.readable_by, state.stamped) == (CURRENT_LAYOUT, 1, True)
    # layout 2 (priorities) changed no data: the queue and its order are as they were
    assert (await queue.stats(policy)).depth == 1
    assert [r.callback_id for r in (await queue.take()).released] == ["cb-1"]


async def test_two_pods_starting_at_once_migrate_once(engine_redis: Any) -> None:
    await engine_redis.set(OLD_KEY, "held")
    calls: list[int] = []
    step = _rename(calls, pause_s=0.3)
    results = await asyncio.gather(
        ensure_layout(engine_redis, current=2, migrations=[step]),
        ensure_layout(engine_redis, current=2, migrations=[step]),
    )
    assert sorted(results) == [[], [2]]
    assert calls == [1]
    assert await engine_redis.get(NEW_KEY) == b"held"
    state = await read_layout(engine_redis)
    assert (state.version, state.readable_by) == (2, 1)
    # a later start finds it current and does not even take the lock
    assert await ensure_layout(engine_redis, current=2, migrations=[step]) == []
    assert calls == [1]


async def test_a_migration_that_dies_midway_is_continued_by_the_next_pod(engine_redis: Any) -> None:
    await engine_redis.set(OLD_KEY, "held")
    calls: list[int] = []

    async def crash(redis: Any) -> None:
        await redis.set(NEW_KEY, "held")  # half done: the old key is still there
        raise ConnectionError("pod killed")

    with pytest.raises(ConnectionError):
        await ensure_layout(engine_redis, current=2, migrations=[LayoutMigration(2, "x", 1, crash)])
    assert (await read_layout(engine_redis)).version == 1  # not recorded as done
    assert await ensure_layout(engine_redis, current=2, migrations=[_rename(calls)]) == [2]
    assert await engine_redis.get(NEW_KEY) == b"held"
    assert await engine_redis.exists(OLD_KEY) == 0


async def test_a_release_that_cannot_read_the_data_refuses_to_start(engine_redis: Any) -> None:
    """A rollback past a two-phase change: the data says which layouts can read it."""
    calls: list[int] = []

    async def noop(redis: Any) -> None:
        calls.append(1)

    steps = [
        _rename(calls),
        LayoutMigration(3, "second phase: new form written", readable_by=2, apply=noop),
    ]
    assert await ensure_layout(engine_redis, current=3, migrations=steps) == [2, 3]
    # layout 2 code still reads layout 3 data (it learnt the new form in the first phase)
    assert await ensure_layout(engine_redis, current=2, migrations=steps[:1]) == []
    with pytest.raises(LayoutTooNew, match=r"layout 3.*layout 2 or later.*knows layout 1"):
        await ensure_layout(engine_redis, current=1, migrations=[])


async def test_a_missing_step_is_an_error_not_a_skip(engine_redis: Any) -> None:
    async def noop(redis: Any) -> None:
        return None

    with pytest.raises(RuntimeError, match="layout migration 2 is missing"):
        await ensure_layout(engine_redis, current=3, migrations=[LayoutMigration(3, "x", 2, noop)])


async def test_waits_for_redis_then_stamps(redis_server: Any) -> None:
    """A dispatcher that starts while Redis is down waits for it instead of serving unchecked."""
    client = redis_server.client()
    await client.flushall()
    redis_server.stop()
    stop = asyncio.Event()
    try:
        waiting = asyncio.create_task(ensure_layout_when_reachable(client, stop))
        await asyncio.sleep(1.0)
        assert not waiting.done()
        redis_server.start()
        assert await asyncio.wait_for(waiting, 30) == [m.version for m in MIGRATIONS]
        assert (await read_layout(client)).stamped
    finally:
        if not redis_server._proc.running:
            redis_server.start()
        await client.aclose()
    assert keys.LAYOUT.startswith("throttle:{reg}:")
