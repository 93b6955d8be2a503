"""Execution history: migrations, the writer's batches, recovery from PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from tests.fixtures.builders import item, policy
from tests.fixtures.metric_samples import sample
from throttle.dispatcher.history_writer import HistoryWriter
from throttle.engine import keys
from throttle.engine.priority import parse_priority
from throttle.engine.queue import Queue
from throttle.engine.registry import reconcile, reconcile_awaited
from throttle.history.migrations import migrate, pending_migrations
from throttle.history.pool import create_pool
from throttle.history.pruning import prune
from throttle.history.recovery import recover
from throttle.metrics import Metrics


async def test_migrate_is_idempotent_and_safe_concurrently(database_url: str) -> None:
    results = await asyncio.gather(*(migrate(database_url) for _ in range(3)))
    applied = [r for r in results if r]
    assert len(applied) == 1  # one run applied everything; the others waited and found nothing
    assert "0001_action_executions" in applied[0]
    assert await migrate(database_url) == []
    assert await pending_migrations(database_url) == []
    conn = await asyncpg.connect(database_url)
    try:
        tables = {r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables")}
    finally:
        await conn.close()
    assert {"action_executions", "policies", "schema_migrations"} <= tables


def writer(redis: Any, database_url: str, **kw: Any) -> HistoryWriter:
    return HistoryWriter(
        redis, lambda: create_pool(database_url), Metrics(CollectorRegistry()), **kw
    )


async def test_writer_records_the_life_of_each_execution(
    engine_redis: Any, database_url: str
) -> None:
    redis = engine_redis
    await migrate(database_url)
    queue = Queue(redis)
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    await reconcile(queue, p)
    for i in range(5):
        await queue.enqueue(item(f"cb-{i}", input_fields={"policy": "p"}), p)
    taken = (await queue.take()).released
    await queue.ack(taken[:3])
    await queue.fail([(taken[3], "HubSpot said 404")])
    await queue.requeue([taken[4]], 0, "HubSpot 503")
    w = writer(redis, database_url)
    await w.ensure_groups()
    while await w.step():
        pass
    pool = await create_pool(database_url)
    try:
        rows = {
            r["callback_id"]: r
            for r in await pool.fetch("SELECT * FROM action_executions ORDER BY callback_id")
        }
    finally:
        await pool.close()
        await w.close()
    assert [rows[f"cb-{i}"]["outcome"] for i in range(5)] == [
        "completed",
        "completed",
        "completed",
        "failed",
        "queued",
    ]
    assert rows["cb-0"]["workflow_id"] == 1
    assert rows["cb-0"]["attempts"] == 1
    assert (
        rows["cb-0"]["received_at"] <= rows["cb-0"]["released_at"] <= rows["cb-0"]["completed_at"]
    )
    assert rows["cb-3"]["last_error"] == "HubSpot said 404"
    assert rows["cb-4"]["last_error"] == "HubSpot 503"
    # committed events are gone from the streams (the buffer only holds the backlog)
    assert await redis.xlen(keys.events(keys.shard_of(p.key))) == 0


ODD_IDS = ["ap-1,2", "a,,b", ",lead", 'q"uote\\', "[not-json", "sl/ash", "\u00e9t\u00e9,\u2603"]
"""HubSpot's callbackIds are opaque: one with a comma once split into two made-up executions."""


async def test_callback_ids_with_commas_round_trip_through_history(
    engine_redis: Any, database_url: str
) -> None:
    redis = engine_redis
    await migrate(database_url)
    queue = Queue(redis)
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    await reconcile(queue, p)
    for cb in ODD_IDS:
        await queue.enqueue(item(cb, input_fields={"policy": "p"}), p)
    taken = (await queue.take()).released
    assert sorted(t.callback_id for t in taken) == sorted(ODD_IDS)
    await queue.ack(taken[:3])
    await queue.fail([(taken[3], "HubSpot said 404")])
    await queue.requeue(taken[4:], 0, "HubSpot 503")
    w = writer(redis, database_url)
    await w.ensure_groups()
    while await w.step():
        pass
    pool = await create_pool(database_url)
    try:
        rows = {r["callback_id"]: r for r in await pool.fetch("SELECT * FROM action_executions")}
    finally:
        await pool.close()
        await w.close()
    assert sorted(rows) == sorted(ODD_IDS)
    outcomes = {t.callback_id: rows[t.callback_id]["outcome"] for t in taken}
    assert [outcomes[t.callback_id] for t in taken] == ["completed"] * 3 + ["failed"] + [
        "queued"
    ] * (len(ODD_IDS) - 4)
    assert all(rows[cb]["released_at"] is not None for cb in ODD_IDS)


async def test_recover_rebuilds_lost_queues_without_duplicates(
    engine_redis: Any, database_url: str
) -> None:
    redis = engine_redis
    await migrate(database_url)
    queue = Queue(redis)
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    await reconcile(queue, p)
    for i in range(6):
        await queue.enqueue(item(f"cb-{i}"), p)
    done = (await queue.take()).released[:2]
    await queue.ack(done)
    w = writer(redis, database_url)
    await w.ensure_groups()
    while await w.step():
        pass
    pool = await create_pool(database_url)
    try:
        # nothing lost: recovery finds everything still present
        first = await recover(queue, pool, {p.key: p})
        assert (first.queued, first.already_present) == (0, 4)
        # Redis loses everything: the 4 unfinished come back in order, the 2 completed do not
        await redis.flushall()
        second = await recover(queue, pool, {p.key: p})
        assert second.queued == 4
        # held until the policy's writer restores its parameters (recover writes none)
        assert (await queue.take()).released == []
        assert await reconcile_awaited(queue, {p.key: p}) == [p.key]
        queue.time_offset_ms = 5000
        again = [r.callback_id for r in (await queue.take()).released]
        assert again == ["cb-2", "cb-3", "cb-4", "cb-5"]
    finally:
        await pool.close()
        await w.close()


async def test_recover_rebuilds_each_execution_at_its_priority(
    engine_redis: Any, database_url: str
) -> None:
    """The priority comes back from history's copy of the inputs, parsed as the webhook did."""
    await migrate(database_url)
    queue = Queue(engine_redis)
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    await reconcile(queue, p)
    for cb, value in [("none", None), ("low", "LOW"), ("high", "HIGH"), ("bad", "urgent")]:
        inputs = {} if value is None else {"priority": value}
        await queue.enqueue(item(cb, input_fields=inputs, priority=parse_priority(value)), p)
    w = writer(engine_redis, database_url)
    await w.ensure_groups()
    while await w.step():
        pass
    pool = await create_pool(database_url)
    try:
        await engine_redis.flushall()
        assert (await recover(queue, pool, {p.key: p})).queued == 4
        await reconcile(queue, p)
        queue.time_offset_ms = 5000
        again = (await queue.take()).released
        assert [r.callback_id for r in again] == ["high", "low", "none", "bad"]
        assert [r.priority.tag for r in again] == ["9", "3", "", "0!"]
    finally:
        await pool.close()
        await w.close()


async def test_full_buffer_drops_and_counts_events_but_never_blocks(
    redis: Any, database_url: str
) -> None:
    queue = Queue(redis, events_maxlen=5)
    p = policy(rate={"limit": 100, "period": "1s", "burst": 20})
    await reconcile(queue, p)
    for i in range(10):
        assert (await queue.enqueue(item(f"cb-{i}"), p)).status == "queued"
    assert len((await queue.take()).released) == 10  # releases never wait for history
    shard = keys.shard_of(p.key)
    assert await redis.xlen(keys.events(shard)) == 5
    w = writer(redis, database_url)
    assert await w.collect_dropped() == 6  # 5 received + 1 released event did not fit
    assert sample(w.metrics, "throttle_history_events_dropped_total") == 6
    assert await w.collect_dropped() == 0  # counted once, by one writer


async def test_retention_prunes_old_rows(database_url: str) -> None:
    await migrate(database_url)
    pool = await create_pool(database_url)
    try:
        await pool.execute(
            """INSERT INTO action_executions (callback_id, portal_id, policy, outcome, updated_at)
               VALUES ('old', 1, 'p', 'completed', now() - interval '31 days'),
                      ('new', 1, 'p', 'completed', now() - interval '29 days')"""
        )
        assert await prune(pool, 30) == 1
        rows = [
            r["callback_id"] for r in await pool.fetch("SELECT callback_id FROM action_executions")
        ]
        assert rows == ["new"]
    finally:
        await pool.close()


async def test_a_completion_found_already_done_is_completed_with_a_note(
    engine_redis: Any, database_url: str
) -> None:
    """History tells the truth: HubSpot answering a re-send "already completed" means the
    execution completed; the note says how we learnt it."""
    await migrate(database_url)
    queue = Queue(engine_redis)
    p = policy(name="noted", rate={"limit": 100, "period": "1s", "burst": 10})
    await reconcile(queue, p)
    for i in range(2):
        await queue.enqueue(item(f"noted-{i}"), p)
    taken = (await queue.take()).released
    await queue.requeue(taken[1:], 0, "no answer in time")
    await queue.ack(taken[:1])
    queue.time_offset_ms = 1000
    again = (await queue.take()).released
    assert await queue.ack(again, note="HubSpot reported it already completed") == 1
    w = writer(engine_redis, database_url)
    await w.ensure_groups()
    while await w.step():
        pass
    pool = await create_pool(database_url)
    try:
        rows = {
            r["callback_id"]: r
            for r in await pool.fetch(
                "SELECT * FROM action_executions WHERE callback_id LIKE 'noted-%'"
            )
        }
    finally:
        await pool.close()
        await w.close()
    assert rows["noted-0"]["outcome"] == "completed"
    assert rows["noted-0"]["last_error"] is None
    assert rows["noted-1"]["outcome"] == "completed"
    assert rows["noted-1"]["last_error"] == "HubSpot reported it already completed"
    assert rows["noted-1"]["attempts"] == 2
